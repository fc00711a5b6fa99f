/**
 * Which event log backend a node runs, read from its environment:
 *
 * - `VIBES_EVENT_BACKEND`: `postgres` (the default), `jetstream`, or `memory`. Memory is used
 *   only when asked for by name: nothing falls back to it silently, since it loses the log
 *   when the process ends. Any other value is a configuration error naming the variable.
 * - `VIBES_NATS_URL`: an existing NATS server or cluster with JetStream (comma-separated
 *   `nats://host:port` URLs). Without it, jetstream runs a bundled, supervised `nats-server`
 *   with its store in `VIBES_NATS_DATA_DIR` (default `<data dir>/nats`).
 * - `VIBES_NATS_TOKEN`: the token an existing server asks for, if any.
 * - `VIBES_NATS_STREAM` and `VIBES_NATS_SUBJECT_PREFIX`: the stream and first subject token
 *   (default `VIBES` and `vibes`), so several deployments can share one NATS.
 *
 * Composition roots turn the answer into layers (`PgEventLog.layer`, `JetStreamEventLog.layer`
 * on `NatsSupervisor` or the URL, `MemoryEventLog.layer`).
 */
import * as path from "node:path"
import { Config, ConfigError, Either, type Option, type Redacted } from "effect"

/** The backend a node runs, with what it needs to start. */
export type EventBackend =
  | { readonly _tag: "Postgres" }
  | { readonly _tag: "Memory" }
  | {
      readonly _tag: "JetStream"
      /** An existing server; none means a bundled, supervised nats-server. */
      readonly url: Option.Option<string>
      readonly token: Option.Option<Redacted.Redacted<string>>
      /** Where the bundled server keeps its store (none: `<data dir>/nats`). */
      readonly dataDir: Option.Option<string>
      readonly stream: string
      readonly prefix: string
    }

const invalid = (name: string, why: string) => ConfigError.InvalidData([name], `${name} ${why}`)

const checked = <A>(config: Config.Config<A>, name: string, why: string, ok: (a: A) => boolean) =>
  config.pipe(Config.mapOrFail((a) => (ok(a) ? Either.right(a) : Either.left(invalid(name, why)))))

const backendName = Config.string("VIBES_EVENT_BACKEND").pipe(
  Config.withDefault("postgres"),
  Config.mapOrFail((value) => {
    const name = value.trim().toLowerCase()
    return name === "postgres" || name === "jetstream" || name === "memory"
      ? Either.right(name)
      : Either.left(
          invalid(
            "VIBES_EVENT_BACKEND",
            `must be postgres, jetstream or memory (got '${value.slice(0, 40)}')`
          )
        )
  })
)

const natsUrl = checked(
  Config.string("VIBES_NATS_URL"),
  "VIBES_NATS_URL",
  "must be one or more comma-separated nats://host:port URLs",
  (value) => value.split(",").every((url) => /^(nats|tls):\/\/[^\s,]+$/.test(url.trim()))
).pipe(Config.option)

/** A stream name or subject token: no whitespace, dots or wildcards. */
const token = (name: string, fallback: string) =>
  checked(Config.string(name), name, "must be letters, digits, '_' or '-'", (value) =>
    /^[A-Za-z0-9_-]{1,64}$/.test(value)
  ).pipe(Config.withDefault(fallback))

/**
 * The backend from `VIBES_EVENT_BACKEND` and its `VIBES_NATS_*` settings. The NATS settings are
 * checked whichever backend runs: a bad value is a mistake to report, not to ignore.
 */
export const config: Config.Config<EventBackend> = Config.all({
  name: backendName,
  url: natsUrl,
  token: Config.redacted("VIBES_NATS_TOKEN").pipe(Config.option),
  dataDir: checked(
    Config.string("VIBES_NATS_DATA_DIR"),
    "VIBES_NATS_DATA_DIR",
    "must be an absolute path",
    (value) => path.isAbsolute(value)
  ).pipe(Config.option),
  stream: token("VIBES_NATS_STREAM", "VIBES"),
  prefix: token("VIBES_NATS_SUBJECT_PREFIX", "vibes")
}).pipe(
  Config.map(({ name, ...settings }): EventBackend => {
    switch (name) {
      case "postgres":
        return { _tag: "Postgres" }
      case "memory":
        return { _tag: "Memory" }
      default:
        return { _tag: "JetStream", ...settings }
    }
  })
)
