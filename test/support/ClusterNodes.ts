/**
 * Several `vibes serve` processes as one cluster on a suite-private database, with a fast sharding
 * configuration (short lock expiry and refresh intervals), for tests and benchmarks.
 */
import * as crypto from "node:crypto"
import { Context, Deferred, Effect, ExecutionStrategy, Exit, Layer, Option, Redacted, Scope } from "effect"
import * as Client from "../../rpc/Client.js"
import * as FreePort from "../../infra/net/FreePort.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "./Attach.js"
import * as TestDatabase from "./TestDatabase.js"
import { tempDir } from "./TempDir.js"
import * as Vibes from "./VibesProcess.js"

/** Lock expiry 2 s, refreshed every 0.5 s; nodes beat every 0.25 s and are lost after 2 s. */
export const fastTiming: Record<string, string> = {
  VIBES_SHARD_LOCK_EXPIRATION: "2 seconds",
  VIBES_SHARD_LOCK_REFRESH: "500 millis",
  VIBES_SHARD_REFRESH_INTERVAL: "250 millis",
  VIBES_HEARTBEAT_INTERVAL: "250 millis",
  VIBES_NODE_LOST_AFTER: "2 seconds"
}

/** One node: its process while it runs, and a client connected to it. */
export interface Node {
  readonly nodeId: string
  readonly dataDir: string
  readonly runnerPort: number
  readonly serving: Vibes.Serving
  readonly client: Client.Client
  /** Closing it stops the process (TERM, then KILL) and the client. */
  readonly scope: Scope.CloseableScope
}

/** A cluster under test. */
export interface TestCluster {
  readonly token: string
  readonly databaseUrl: string
  /** The running nodes by index (replaced when a node is restarted). */
  readonly nodes: Array<Node>
  /** Starts node `index` (again, on the same data dir, id and runner port). */
  readonly start: (index: number) => Effect.Effect<Node, Error>
  /** `kill -9` of node `index`; resolves once the process is gone. */
  readonly kill: (index: number) => Effect.Effect<void>
  /** SIGTERM to node `index`; resolves with its exit code once it has drained and exited. */
  readonly drain: (index: number) => Effect.Effect<number | null>
  /** Waits until `count` nodes are up and every shard group has its owners, as node `via` sees it. */
  readonly settled: (count: number, via?: number) => Effect.Effect<void, Error>
}

/** Starts `count` nodes named `<prefix>-<i>`; everything stops when the scope closes. */
export const make = (prefix: string, count: number, extraEnv: Record<string, string> = {}) =>
  Effect.gen(function* () {
    const database = yield* TestDatabase.freshDatabase(`vibes_${prefix}`)
    const databaseUrl = Redacted.value(database.url)
    const token = crypto.randomBytes(24).toString("hex")
    const outer = yield* Effect.scope
    const slots: Array<{ nodeId: string; dataDir: string; runnerPort: number }> = []
    for (let i = 0; i < count; i++) {
      const dataDir = yield* tempDir(`vibes-${prefix}-${i}-`)
      yield* stopPtyHostAtEnd(dataDir)
      slots.push({ nodeId: `${prefix}-${i}`, dataDir, runnerPort: yield* FreePort.find() })
    }
    const nodes: Array<Node> = []

    const start = (index: number) =>
      Effect.gen(function* () {
        const slot = slots[index]
        if (slot === undefined) return yield* Effect.fail(new Error(`no node ${index}`))
        const scope = yield* Scope.fork(outer, ExecutionStrategy.sequential)
        const env = Vibes.childEnv({
          DATABASE_URL: databaseUrl,
          VIBES_ADMIN_TOKEN: token,
          VIBES_NODE_ID: slot.nodeId,
          VIBES_RUNNER_PORT: String(slot.runnerPort),
          VIBES_RUNNER_HOST: "127.0.0.1",
          VIBES_LOG_LEVEL: "info",
          ...fastTiming,
          ...extraEnv
        })
        const serving = yield* Vibes.serve(slot.dataDir, env).pipe(Scope.extend(scope))
        const client = yield* Effect.map(
          Layer.build(clientLayer(serving.url, token)).pipe(Scope.extend(scope)),
          Context.get(Client.VibesClient)
        )
        const node: Node = { ...slot, serving, client, scope }
        nodes[index] = node
        return node
      })

    const stopped = (index: number, signal: NodeJS.Signals) =>
      Effect.gen(function* () {
        const node = nodes[index]
        if (node === undefined) return null
        node.serving.child.kill(signal)
        const exit = yield* Deferred.await(node.serving.exited)
        yield* Scope.close(node.scope, Exit.void)
        if (exit.code !== 0 && signal === "SIGTERM") {
          // Why it did not stop cleanly: its warnings and errors, and its last lines.
          const telling = node.serving.lines.filter((line) => /"logLevel":"(WARN|ERROR|FATAL)"/.test(line))
          yield* Effect.logError(
            `node ${node.nodeId} exited with ${exit.code ?? exit.signal} after SIGTERM:\n${[
              ...telling.slice(-20),
              "…",
              ...node.serving.lines.slice(-20)
            ].join("\n")}`
          )
        }
        return exit.code
      })

    const settled = (expected: number, via = 0) =>
      eventually(
        Effect.gen(function* () {
          const node = nodes[via]
          if (node === undefined) return Option.none()
          const info = yield* node.client.System.Cluster().pipe(Effect.option)
          if (Option.isNone(info)) return Option.none()
          const up = info.value.nodes.filter((n) => n.state === "up")
          const groupsHeld = info.value.groups.every((g) => g.shards === info.value.shardsPerGroup)
          const shared = info.value.groups.find((g) => g.name === "default")
          return up.length === expected && groupsHeld && shared?.owners.length === expected
            ? Option.some(undefined)
            : Option.none()
        }),
        `${expected} nodes up with every shard held`,
        60_000
      )

    // All at once: the first start of a cluster races on creating its tables.
    yield* Effect.forEach(slots, (_, i) => start(i), { concurrency: "unbounded", discard: true })

    return {
      token,
      databaseUrl,
      nodes,
      start,
      kill: (index) => Effect.asVoid(stopped(index, "SIGKILL")),
      drain: (index) => stopped(index, "SIGTERM"),
      settled
    } satisfies TestCluster
  })
