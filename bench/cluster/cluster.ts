/**
 * The cluster: real `vibes serve` processes (from the sources) on one fresh database.
 *
 * 1. **Round trip**: `Sessions.Resize` to the size a session already has (the entity answers at
 *    once: no PTY call, no event), through node A's client, to a session on A and to one on B,
 *    taken in turn; p50/p99 of each and their ratio.
 * 2. **Throughput**: the same call from `BENCH_CLUSTER_INFLIGHT` concurrent callers for
 *    `BENCH_CLUSTER_SECONDS`, against a cluster of one node (all sessions on it) and of three
 *    (sessions spread, callers spread over the three nodes' clients, so two calls in three cross
 *    nodes); messages per second and their ratio.
 * 3. **Failover**: with the default (tuned) sharding configuration, `kill -9` of the node that owns
 *    a job's shard, then `Jobs.Logs` for that job through another node (the call goes to the job's
 *    entity) until one succeeds; the time from the kill, `BENCH_FAILOVER_ROUNDS` times.
 *
 * Env: BENCH_CLUSTER_CALLS (round trips of each kind, default 2000), BENCH_CLUSTER_INFLIGHT (48),
 * BENCH_CLUSTER_SECONDS (10), BENCH_FAILOVER_ROUNDS (3), DATABASE_URL.
 */
import { Chunk, Effect, Option, Stream } from "effect"
import type * as Client from "../../rpc/Client.js"
import { JobSpec } from "../../rpc/Jobs.js"
import { CreateSession } from "../../rpc/Sessions.js"
import * as ClusterNodes from "../../test/support/ClusterNodes.js"
import * as Harness from "../events/harness.js"

const calls = Harness.envInt("BENCH_CLUSTER_CALLS", 2000)
const inflight = Harness.envInt("BENCH_CLUSTER_INFLIGHT", 48)
const seconds = Harness.envInt("BENCH_CLUSTER_SECONDS", 10)
const failoverRounds = Harness.envInt("BENCH_FAILOVER_ROUNDS", 3)
const parts = Harness.envList("BENCH_CLUSTER_PARTS", ["rtt", "throughput", "failover"])

/** The tuned defaults of `vibes serve` (see Config.ts), not the tests' faster ones. */
const tunedTiming: Record<string, string> = {
  VIBES_SHARD_LOCK_EXPIRATION: "3 seconds",
  VIBES_SHARD_LOCK_REFRESH: "1 second",
  VIBES_SHARD_REFRESH_INTERVAL: "500 millis",
  VIBES_HEARTBEAT_INTERVAL: "2 seconds",
  VIBES_NODE_LOST_AFTER: "30 seconds"
}

const orBench = <A, E>(effect: Effect.Effect<A, E>, what: string) =>
  Effect.mapError(effect, (error) => new Harness.BenchError({ message: `${what}: ${String(error)}` }))

/** A session (`sleep`) on node `nodeId`, created through `client`. */
const session = (client: Client.Client, nodeId: string) =>
  orBench(
    client.Sessions.Create(
      CreateSession.make({ command: "sleep", args: ["3600"], node: nodeId, cols: 80, rows: 24 })
    ),
    `create a session on ${nodeId}`
  )

/** One entity round trip: a resize to the size the session has. */
const touch = (client: Client.Client, sessionId: string) =>
  orBench(client.Sessions.Resize({ sessionId, cols: 80, rows: 24 }), "resize")

const roundTrips = Effect.gen(function* () {
  yield* Harness.progress("round trip: starting two nodes")
  const cluster = yield* ClusterNodes.make("bcrtt", 2)
  yield* cluster.settled(2)
  const [a, b] = cluster.nodes
  if (a === undefined || b === undefined) return yield* new Harness.BenchError({ message: "no nodes" })
  const local = yield* session(a.client, a.nodeId)
  const remote = yield* session(a.client, b.nodeId)
  for (let i = 0; i < 200; i++) {
    yield* touch(a.client, local.id)
    yield* touch(a.client, remote.id)
  }
  const samples = { local: [] as Array<number>, remote: [] as Array<number> }
  for (let i = 0; i < calls; i++) {
    for (const [kind, id] of [
      ["local", local.id],
      ["remote", remote.id]
    ] as const) {
      const start = Harness.now()
      yield* touch(a.client, id)
      samples[kind].push(Harness.now() - start)
    }
  }
  return samples
})

/**
 * Calls completed in `seconds` by `inflight` callers spread over the nodes' clients; each caller
 * goes round all sessions, or with `localOnly` round those of its own node.
 */
const throughput = (nodes: number, localOnly = false) =>
  Effect.gen(function* () {
    yield* Harness.progress(`throughput: starting ${nodes} node(s)`)
    const cluster = yield* ClusterNodes.make(`bctp${nodes}`, nodes, tunedTiming)
    yield* cluster.settled(nodes)
    const sessions: Array<string> = []
    const byNode: Array<Array<string>> = cluster.nodes.map(() => [])
    for (let i = 0; i < 6; i++) {
      const node = cluster.nodes[i % nodes]
      if (node === undefined) continue
      const id = (yield* session(node.client, node.nodeId)).id
      sessions.push(id)
      byNode[i % nodes]?.push(id)
    }
    const clients = cluster.nodes.map((n) => n.client)
    // Warm every path.
    for (const client of clients) for (const id of sessions) yield* touch(client, id)
    let done = 0
    const deadline = Harness.now() + seconds * 1000
    const start = Harness.now()
    yield* Effect.forEach(
      Array.from({ length: inflight }, (_, i) => i),
      (caller) =>
        Effect.gen(function* () {
          const client = clients[caller % clients.length]
          const targets = localOnly ? (byNode[caller % clients.length] ?? []) : sessions
          if (client === undefined) return
          let turn = caller
          while (Harness.now() < deadline) {
            yield* touch(client, targets[turn++ % targets.length] ?? "")
            done++
          }
        }),
      { concurrency: "unbounded", discard: true }
    )
    const elapsed = Harness.now() - start
    return { done, perSecond: (done * 1000) / elapsed }
  }).pipe(Effect.scoped)

/** Milliseconds from `kill -9` of a job's owner to the first answer from its entity elsewhere. */
const failoverOnce = (cluster: ClusterNodes.TestCluster, victim: number) =>
  Effect.gen(function* () {
    const via = cluster.nodes[(victim + 1) % cluster.nodes.length]
    const dead = cluster.nodes[victim]
    if (via === undefined || dead === undefined) return yield* new Harness.BenchError({ message: "no nodes" })
    // A job whose shard the victim owns.
    let jobId = ""
    for (let i = 0; i < 200 && jobId === ""; i++) {
      const job = yield* orBench(via.client.Jobs.Submit(JobSpec.make({ command: "true" })), "submit")
      const info = yield* Effect.gen(function* () {
        for (;;) {
          const current = yield* orBench(via.client.Jobs.Get({ jobId: job.id }), "get")
          if (current.nodeId !== null && current.status === "succeeded") return current
          yield* Effect.sleep("20 millis")
        }
      })
      if (info.nodeId === dead.nodeId) jobId = job.id
    }
    if (jobId === "") return yield* new Harness.BenchError({ message: "no job landed on the victim" })
    const logs = via.client.Jobs.Logs({ jobId, follow: false }).pipe(
      Stream.runCollect,
      Effect.map(Chunk.size)
    )
    yield* orBench(logs, "logs before the kill")
    yield* cluster.kill(victim)
    const killedAt = Harness.now()
    for (;;) {
      const answered = yield* logs.pipe(Effect.timeout("1 second"), Effect.option)
      if (Option.isSome(answered)) return Harness.now() - killedAt
    }
  })

const failover = Effect.gen(function* () {
  yield* Harness.progress("failover: starting three nodes with the tuned configuration")
  const cluster = yield* ClusterNodes.make("bcfail", 3, tunedTiming)
  yield* cluster.settled(3)
  const times: Array<number> = []
  for (let round = 0; round < failoverRounds; round++) {
    const victim = 2 - (round % 2)
    const millis = yield* failoverOnce(cluster, victim)
    times.push(millis)
    yield* Harness.progress(`failover round ${round + 1}: ${Harness.millis(millis)} ms`)
    yield* cluster.start(victim).pipe(Effect.mapError((e) => new Harness.BenchError({ message: e.message })))
    yield* cluster.settled(3).pipe(Effect.mapError((e) => new Harness.BenchError({ message: e.message })))
  }
  return times
})

const orFail = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.mapError(effect, (e) => new Harness.BenchError({ message: String(e) }))

Harness.run(
  Effect.gen(function* () {
    const db = yield* Harness.database
    const machine = yield* Harness.machine(db)
    yield* Harness.print("## Cluster\n")
    yield* Harness.print(Harness.machineMarkdown(machine) + "\n")

    if (parts.includes("rtt")) {
      const rtt = yield* orFail(Effect.scoped(roundTrips))
      yield* Harness.print(
        `Entity round trip (\`Sessions.Resize\` to the same size), ${calls} calls each, in turn:\n`
      )
      yield* Harness.print(Harness.header(["entity", "p50 ms", "p99 ms", "vs same node (p50)"]))
      const p50Local = Harness.percentile(rtt.local, 50)
      for (const [kind, values] of [
        ["same node", rtt.local],
        ["another node", rtt.remote]
      ] as const) {
        yield* Harness.print(
          Harness.row([
            kind,
            Harness.millis(Harness.percentile(values, 50)),
            Harness.millis(Harness.percentile(values, 99)),
            Harness.ratio(Harness.percentile(values, 50), p50Local)
          ])
        )
      }
    }

    if (parts.includes("throughput")) {
      const one = yield* orFail(throughput(1))
      const three = yield* orFail(throughput(3))
      const threeLocal = yield* orFail(throughput(3, true))
      yield* Harness.print(
        `\nEntity messages per second, ${inflight} callers for ${seconds} s, 6 sessions:\n`
      )
      yield* Harness.print(Harness.header(["nodes", "calls", "calls/s", "vs one node"]))
      for (const [label, result] of [
        ["1", one],
        ["3, callers spread, sessions spread (2 calls in 3 cross nodes)", three],
        ["3, each caller to its own node's sessions", threeLocal]
      ] as const) {
        yield* Harness.print(
          Harness.row([
            label,
            Harness.count(result.done),
            Harness.count(Math.round(result.perSecond)),
            Harness.ratio(result.perSecond, one.perSecond)
          ])
        )
      }
    }

    if (parts.includes("failover")) {
      const times = yield* orFail(Effect.scoped(failover))
      yield* Harness.print(
        `\nFailover (kill -9 to the first answer from an entity of the dead node), tuned configuration:\n`
      )
      yield* Harness.print(Harness.header(["round", "ms", "≤ 5 s"]))
      for (const [i, ms] of times.entries()) {
        yield* Harness.print(Harness.row([String(i + 1), Harness.millis(ms), ms <= 5000 ? "yes" : "no"]))
      }
    }
  })
)
