/**
 * NATS for tests: one supervised `nats-server -js` per test file, on a free port with its store
 * in a temporary directory, started on first use and stopped when the file's tests are done; or
 * the server named by `VIBES_TEST_NATS_URL`. Each log gets a stream and subject prefix of its
 * own, so suites and runs never see each other's events.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll } from "@effect/vitest"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import { Effect, Layer, ManagedRuntime, Redacted } from "effect"
import * as NatsSupervisor from "../../actors/supervisors/NatsSupervisor.js"
import * as JetStreamEventLog from "../../infra/eventlog/JetStreamEventLog.js"

/** Where a test's NATS server answers. */
export interface Server {
  readonly url: string
  readonly token?: Redacted.Redacted<string>
}

let runtime:
  ManagedRuntime.ManagedRuntime<NatsSupervisor.NatsSupervisor, NatsSupervisor.NatsServerError> | undefined
let dir: string | undefined

afterAll(async () => {
  await runtime?.dispose()
  if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
})

/** This file's server (started on first use). */
export const server: Effect.Effect<Server, NatsSupervisor.NatsServerError> = Effect.suspend(() => {
  const external = process.env["VIBES_TEST_NATS_URL"]
  if (external !== undefined && external !== "") return Effect.succeed({ url: external })
  if (runtime === undefined) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "vibes-test-nats-"))
    runtime = ManagedRuntime.make(NatsSupervisor.layer({ dataDir: dir, maxRestarts: 3 }))
  }
  return Effect.flatMap(runtime.runtimeEffect, (built) =>
    Effect.provide(
      Effect.map(NatsSupervisor.NatsSupervisor, (supervisor) => ({
        url: supervisor.url,
        token: supervisor.token
      })),
      built
    )
  )
})

/** A name no other test uses. */
export const uniqueName = () => crypto.randomBytes(6).toString("hex")

/** Deletes `streams` when the scope closes, so a shared server keeps nothing of a test. */
const deleteStreamsAfter = (at: Server, streams: ReadonlyArray<string>) =>
  Layer.scopedDiscard(
    Effect.addFinalizer(() =>
      Effect.promise(async () => {
        const nc = await connect({
          servers: at.url,
          ...(at.token !== undefined ? { token: Redacted.value(at.token) } : {})
        })
        try {
          const jsm = await jetstreamManager(nc)
          for (const stream of streams) await jsm.streams.delete(stream).catch(() => false)
        } finally {
          await nc.close()
        }
      }).pipe(Effect.catchAllDefect(() => Effect.void))
    )
  )

/** A JetStream log on its own stream (`T_<random>`, subjects `t<random>.>`) on `at`, deleted afterwards. */
export const logOn = (at: Server, options: Partial<JetStreamEventLog.Options> = {}) => {
  const name = uniqueName()
  const stream = options.stream ?? `T_${name}`
  return JetStreamEventLog.layer({
    url: at.url,
    ...(at.token !== undefined ? { token: at.token } : {}),
    stream,
    prefix: `t${name}`,
    ...options
  }).pipe(Layer.provideMerge(deleteStreamsAfter(at, [stream, `${stream}_OFFSETS`])))
}

/** A JetStream log on its own stream on this file's server. */
export const freshLog = () => Layer.unwrapEffect(Effect.map(server, (at) => logOn(at)))
