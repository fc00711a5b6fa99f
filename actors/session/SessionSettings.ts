/**
 * Node-wide settings of terminal sessions: defaults for new sessions and how history is kept.
 */
import * as os from "node:os"
import { Context, Duration, Effect, Layer } from "effect"

/** Settings every session entity of this node shares. */
export class SessionSettings extends Context.Tag("vibes/SessionSettings")<
  SessionSettings,
  {
    /** The node whose PTY host holds the sessions it creates. */
    readonly nodeId: string
    /** Program of a session created without one. */
    readonly shell: string
    /** Working directory of a session created without one. */
    readonly home: string
    /** Environment every session starts from (the request's env is added on top). */
    readonly env: Readonly<Record<string, string>>
    /** Lines of scrollback the screen model keeps. */
    readonly scrollback: number
    /** Output after which a `session.snapshot` is recorded. */
    readonly snapshotEvery: number
    /** Quiet time after which a session counts as idle (waiting for input). */
    readonly idleAfter: Duration.Duration
    /**
     * Variables that point the session's agents at this node's AI-provider proxy, with the
     * session's own token (added over `env`, under the request's own variables).
     */
    readonly proxyEnv: (sessionId: string) => Effect.Effect<Record<string, string>>
  }
>() {}

/** Variables of the server's environment that never reach a session. */
const secret = /^(VIBES_|DATABASE_URL$|PG|OTEL_)/

/** The environment of a new session: the server's, minus its secrets, with a capable TERM. */
export const sessionEnv = (env: NodeJS.ProcessEnv = process.env): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [key, value] of Object.entries(env)) {
    if (value !== undefined && !secret.test(key)) out[key] = value
  }
  out.TERM = "xterm-256color"
  out.COLORTERM = "truecolor"
  return out
}

/** The user's login shell, from `$SHELL` or the password database. */
export const defaultShell = (): string => {
  const fromEnv = process.env.SHELL
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv
  const fromPasswd = os.userInfo().shell
  return fromPasswd !== null && fromPasswd !== "" ? fromPasswd : "/bin/sh"
}

/** Settings with the defaults for `nodeId`; `overrides` win. */
export const layer = (
  nodeId: string,
  overrides: Partial<Omit<SessionSettings["Type"], "nodeId">> = {}
): Layer.Layer<SessionSettings> =>
  Layer.succeed(SessionSettings, {
    nodeId,
    shell: defaultShell(),
    home: os.homedir(),
    env: sessionEnv(),
    scrollback: 10_000,
    snapshotEvery: 1024 * 1024,
    idleAfter: Duration.seconds(5),
    proxyEnv: () => Effect.succeed({}),
    ...overrides
  })
