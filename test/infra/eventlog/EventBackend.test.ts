import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Option, Redacted } from "effect"
import * as EventBackend from "../../../infra/eventlog/EventBackend.js"

const read = (env: Record<string, string>) =>
  Effect.withConfigProvider(EventBackend.config, ConfigProvider.fromMap(new Map(Object.entries(env))))

describe("event backend selection", () => {
  it.effect("is Postgres unless another backend is asked for by name", () =>
    Effect.gen(function* () {
      expect(yield* read({})).toEqual({ _tag: "Postgres" })
      expect(yield* read({ VIBES_EVENT_BACKEND: "memory" })).toEqual({ _tag: "Memory" })
    })
  )

  it.effect("jetstream runs a bundled server unless VIBES_NATS_URL names one", () =>
    Effect.gen(function* () {
      const bundled = yield* read({ VIBES_EVENT_BACKEND: "jetstream" })
      expect(bundled).toMatchObject({ _tag: "JetStream", stream: "VIBES", prefix: "vibes" })
      if (bundled._tag !== "JetStream") return
      expect(Option.isNone(bundled.url)).toBe(true)
      const external = yield* read({
        VIBES_EVENT_BACKEND: "JetStream",
        VIBES_NATS_URL: "nats://10.0.0.1:4222,nats://10.0.0.2:4222",
        VIBES_NATS_TOKEN: "s3cret-token",
        VIBES_NATS_STREAM: "EVENTS_EU",
        VIBES_NATS_DATA_DIR: "/var/lib/vibes/nats"
      })
      if (external._tag !== "JetStream") throw new Error("expected jetstream")
      expect(external.url).toEqual(Option.some("nats://10.0.0.1:4222,nats://10.0.0.2:4222"))
      expect(Option.map(external.token, Redacted.value)).toEqual(Option.some("s3cret-token"))
      expect(external.stream).toBe("EVENTS_EU")
      expect(external.dataDir).toEqual(Option.some("/var/lib/vibes/nats"))
    })
  )

  it.effect("a bad value is an error naming its variable", () =>
    Effect.gen(function* () {
      for (const [env, variable] of [
        [{ VIBES_EVENT_BACKEND: "iggy" }, "VIBES_EVENT_BACKEND"],
        [{ VIBES_EVENT_BACKEND: "jetstream", VIBES_NATS_URL: "http://x:4222" }, "VIBES_NATS_URL"],
        [{ VIBES_EVENT_BACKEND: "jetstream", VIBES_NATS_STREAM: "a.b" }, "VIBES_NATS_STREAM"],
        [{ VIBES_EVENT_BACKEND: "jetstream", VIBES_NATS_DATA_DIR: "relative/nats" }, "VIBES_NATS_DATA_DIR"]
      ] as const) {
        const error = yield* Effect.flip(read(env))
        expect(String(error)).toContain(variable)
      }
    })
  )
})
