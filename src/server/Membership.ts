/**
 * This node as a member of its cluster: it records that it is alive (heartbeat, shards held,
 * entities active), picks the machine a new session runs on, takes over the sessions of a node
 * that went silent, and describes the cluster for `System.Cluster`, `vibes cluster` and
 * `/metrics`.
 *
 * A node is `up` while its heartbeat is recent, `unresponsive` when it is late, and `lost` once
 * it has been silent for `nodeLostAfter` without a clean stop. The sessions of a lost node's
 * machine are marked lost (their PTYs went with it); those whose restart policy asks for it are
 * started again on a live machine, and the old session records its replacement.
 */
import {
  Context,
  DateTime,
  Duration,
  Effect,
  Layer,
  Metric,
  MetricLabel,
  Option,
  Schedule,
  Scope
} from "effect"
import * as Sharding from "@effect/cluster/Sharding"
import { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { CreateSession, InvalidSessionRequest, SessionUnavailable } from "../../rpc/Sessions.js"
import { ClusterInfo, ClusterNode, type NodeState } from "../../rpc/System.js"
import * as Cluster from "../../infra/cluster/Cluster.js"
import { Session } from "../../actors/session/SessionEntity.js"
import { type Row, SessionRegistry } from "../../actors/session/SessionRegistry.js"
import type { ClusterConfig } from "../config/Config.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"

/** What the membership needs to know. */
export interface Options {
  readonly nodeId: string
  readonly cluster: Option.Option<ClusterConfig>
  readonly heartbeat: Duration.Duration
  readonly nodeLostAfter: Duration.Duration
}

/** This node's view of the cluster. */
export class Membership extends Context.Tag("vibes/Membership")<
  Membership,
  {
    /** This node's machine: the prefix of the ids of the sessions it holds. */
    readonly machine: string
    /** The machine for a new session: node `node`'s, or the least loaded live one's. */
    readonly pickMachine: (
      node: Option.Option<string>
    ) => Effect.Effect<string, InvalidSessionRequest | SessionUnavailable>
    readonly describe: Effect.Effect<ClusterInfo, SqlError>
    /** Records where clients reach this node, once it listens. */
    readonly announce: (url: string) => Effect.Effect<void>
  }
>() {}

const nodesGauge = Metric.gauge("vibes_cluster_nodes", {
  description: "Nodes of the cluster by state, as this node sees them"
})
const shardsGauge = Metric.gauge("vibes_cluster_shards", { description: "Shards this node holds" })
const entitiesGauge = Metric.gauge("vibes_cluster_entities", {
  description: "Entities (sessions, jobs) active on this node"
})
const takenOver = Metric.counter("vibes_cluster_sessions_taken_over_total", {
  description: "Sessions of lost nodes this node marked lost (and restarted when their policy says so)",
  incremental: true
})

const states: ReadonlyArray<NodeState> = ["up", "unresponsive", "lost", "stopped"]

interface NodeRow {
  readonly node_id: string
  readonly machine: string | null
  readonly version: string
  readonly host: string
  readonly pid: number
  readonly url: string | null
  readonly runner_address: string | null
  readonly started_at: Date
  readonly last_seen_at: Date
  readonly stopped_at: Date | null
  readonly age_ms: string | number
  readonly shards: number
  readonly entities: number
  readonly sessions: string | number
  readonly jobs: string | number
}

/**
 * A scope that closes once the cluster runner, and so every entity, has stopped. The heartbeat
 * runs in it: a stopping node is seen alive until its entities have handed their work back (a job
 * found running on a live node waits for that node; see `JobEntity`).
 */
export class NodeLifetime extends Context.Tag("vibes/NodeLifetime")<NodeLifetime, Scope.Scope>() {}

/** The lifetime scope; provide it below the runner. */
export const lifetimeLayer: Layer.Layer<NodeLifetime> = Layer.scoped(NodeLifetime, Effect.scope)

/** Builds the membership; its scope owns the sweeper, the node's lifetime its heartbeat. */
export const layer = (
  options: Options
): Layer.Layer<Membership, never, SqlClient | Sharding.Sharding | SessionRegistry | Emitter | NodeLifetime> =>
  Layer.scoped(
    Membership,
    Effect.gen(function* () {
      const sql = yield* SqlClient
      const sharding = yield* Sharding.Sharding
      const registry = yield* SessionRegistry
      const emitter = yield* Emitter
      const makeSession = yield* Session.client
      const { nodeId } = options
      const machine = Cluster.machineOf(nodeId)
      const groups = Cluster.groupsOf(nodeId)
      const clustered = Option.isSome(options.cluster)
      const upWithin = Duration.toMillis(options.heartbeat) * 3
      const lostAfter = Duration.toMillis(options.nodeLostAfter)

      const stateOf = (row: NodeRow): NodeState => {
        if (row.stopped_at !== null) return "stopped"
        const age = Number(row.age_ms)
        return age <= upWithin ? "up" : age <= lostAfter ? "unresponsive" : "lost"
      }

      const nodes = sql<NodeRow>`
        SELECT n.node_id, n.machine, n.version, n.host, n.pid, n.url, n.runner_address, n.started_at,
          n.last_seen_at, n.stopped_at, n.shards, n.entities,
          EXTRACT(EPOCH FROM (now() - n.last_seen_at)) * 1000 AS age_ms,
          (SELECT count(*) FROM vibes_sessions s WHERE s.node_id = n.node_id AND s.state = 'running') AS sessions,
          (SELECT count(*) FROM jobs j WHERE j.node_id = n.node_id AND j.status = 'running') AS jobs
        FROM vibes_nodes n
        WHERE n.stopped_at IS NULL OR n.stopped_at > now() - interval '1 hour'
        ORDER BY n.started_at, n.node_id
      `

      const liveNodes = Effect.map(nodes, (rows) =>
        rows.filter((row) => row.machine !== null && stateOf(row) === "up")
      )

      const pickMachine = (requested: Option.Option<string>) =>
        Effect.gen(function* () {
          if (!clustered) {
            if (Option.isSome(requested) && requested.value !== nodeId) {
              return yield* new InvalidSessionRequest({
                field: "node",
                message: `this is a single node (${nodeId}); there is no node '${requested.value}'`
              })
            }
            return machine
          }
          const live = yield* liveNodes.pipe(
            Effect.mapError(
              (error) =>
                new SessionUnavailable({
                  sessionId: "*",
                  message: `cannot read the cluster's nodes: ${error.message}`
                })
            )
          )
          if (Option.isSome(requested)) {
            const found = live.find((row) => row.node_id === requested.value)
            if (found?.machine == null) {
              return yield* new InvalidSessionRequest({
                field: "node",
                message: `no live node '${requested.value}'; live nodes: ${live.map((row) => row.node_id).join(", ") || "none"}`
              })
            }
            return found.machine
          }
          // The fewest running sessions; this node on a tie (its PTY host is known to work).
          const best = [...live].sort(
            (a, b) =>
              Number(a.sessions) - Number(b.sessions) ||
              Number(b.node_id === nodeId) - Number(a.node_id === nodeId)
          )[0]
          return best?.machine ?? machine
        })

      const groupOwners = Effect.gen(function* () {
        if (!clustered)
          return [...groups].map((name) => ({ name, shards: Cluster.shardsPerGroup, owners: [nodeId] }))
        const expiration = Option.match(options.cluster, {
          onNone: () => 0,
          onSome: (c) => Duration.toSeconds(c.shardLockExpiration)
        })
        const rows = yield* sql<{ grp: string; address: string; shards: string | number }>`
          SELECT split_part(l.shard_id, ':', 1) AS grp, l.address, count(*) AS shards
          FROM cluster_locks l
          WHERE l.acquired_at > now()::timestamp - make_interval(secs => ${expiration})
          GROUP BY 1, 2
        `.pipe(Effect.orElseSucceed(() => []))
        const byAddress = new Map(
          (yield* nodes).flatMap((row) =>
            row.runner_address !== null ? [[row.runner_address, row.node_id]] : []
          )
        )
        const result = new Map<string, { name: string; shards: number; owners: Array<string> }>()
        for (const row of rows) {
          const entry = result.get(row.grp) ?? { name: row.grp, shards: 0, owners: [] }
          entry.shards += Number(row.shards)
          entry.owners.push(byAddress.get(row.address) ?? row.address)
          result.set(row.grp, entry)
        }
        return [...result.values()].sort((a, b) => a.name.localeCompare(b.name))
      })

      const describe = Effect.gen(function* () {
        const rows = yield* nodes
        return ClusterInfo.make({
          mode: clustered ? "cluster" : "single",
          nodeId,
          shardsPerGroup: Cluster.shardsPerGroup,
          groups: yield* groupOwners,
          entityTypes: ["Session", "Job"],
          nodes: rows.map((row) =>
            ClusterNode.make({
              nodeId: row.node_id,
              machine: row.machine,
              version: row.version,
              host: row.host,
              pid: row.pid,
              url: row.url,
              runnerAddress: row.runner_address,
              state: stateOf(row),
              startedAt: DateTime.unsafeFromDate(row.started_at),
              lastSeenAt: DateTime.unsafeFromDate(row.last_seen_at),
              shards: row.shards,
              entities: row.entities,
              sessions: Number(row.sessions),
              jobs: Number(row.jobs)
            })
          )
        })
      })

      const beat = Effect.gen(function* () {
        const shards = Cluster.ownedShards(sharding, groups)
        const entities = yield* sharding.activeEntityCount
        yield* sql`
          UPDATE vibes_nodes SET last_seen_at = now(), shards = ${shards}, entities = ${entities}
          WHERE node_id = ${nodeId}
        `
        shardsGauge.unsafeUpdate(shards, [])
        entitiesGauge.unsafeUpdate(entities, [])
        const rows = yield* nodes
        for (const state of states) {
          nodesGauge.unsafeUpdate(rows.filter((row) => stateOf(row) === state).length, [
            MetricLabel.make("state", state)
          ])
        }
      })

      /** The sessions of a lost node: marked lost, and started again elsewhere per their policy. */
      /** Starts lost session `row` again on a live machine and links the two. */
      const restartElsewhere = (row: Row, lost: string) =>
        Effect.gen(function* () {
          const target = yield* pickMachine(Option.none())
          const replacement = Cluster.newSessionId(target)
          yield* makeSession(replacement).Create(
            CreateSession.make({
              command: row.command,
              args: row.args,
              cwd: row.cwd,
              env: row.env,
              cols: row.cols,
              rows: row.rows,
              restartPolicy: row.restartPolicy,
              ...(row.name !== null ? { name: row.name } : {})
            })
          )
          yield* registry.update(row.id, { replacedBy: replacement })
          yield* emitter.emit(
            "session.replaced",
            { replacedBy: replacement, machine: target },
            { sessionId: row.id, component: "cluster" }
          )
          yield* Effect.logInfo(`session ${row.id} of lost node ${lost} restarted as ${replacement}`)
        }).pipe(
          // One session that cannot start again must not keep the others from it.
          Effect.catchAll((error) =>
            Effect.logWarning(`could not restart lost session ${row.id}: ${error.message}`)
          )
        )

      /** Marks the running sessions of lost node `lost` lost, then restarts them per their policy. */
      const takeOver = (lost: string) =>
        Effect.gen(function* () {
          const rows = yield* registry.takeLost(lost)
          for (const row of rows) {
            takenOver.unsafeUpdate(1, [])
            yield* emitter.emit(
              "session.lost",
              { exitCode: null, signal: null, reason: `node ${lost} was lost` },
              { sessionId: row.id, severity: "warn", component: "cluster" }
            )
            if (row.restartPolicy !== "never") yield* restartElsewhere(row, lost)
          }
        })

      const sweep = Effect.gen(function* () {
        const silent = yield* sql<{ node_id: string }>`
          SELECT node_id FROM vibes_nodes
          WHERE stopped_at IS NULL AND node_id <> ${nodeId}
            AND last_seen_at < now() - make_interval(secs => ${Duration.toSeconds(options.nodeLostAfter)})
        `
        for (const row of silent) yield* takeOver(row.node_id)
      })

      const warnOnce = (what: string) => (error: { readonly message: string }) =>
        Effect.logWarning(`${what} failed: ${error.message}`)

      yield* Effect.forkIn(
        Effect.catchAll(beat, warnOnce("cluster heartbeat")).pipe(
          Effect.repeat(Schedule.spaced(options.heartbeat))
        ),
        yield* NodeLifetime
      )
      if (clustered) {
        yield* Effect.forkScoped(
          Effect.catchAll(sweep, warnOnce("the sweep for lost nodes")).pipe(
            Effect.repeat(Schedule.spaced(options.heartbeat))
          )
        )
      }
      // Draining: no new sessions are placed here while the node stops.
      yield* Effect.addFinalizer(() =>
        sql`UPDATE vibes_nodes SET stopped_at = now() WHERE node_id = ${nodeId}`.pipe(Effect.ignore)
      )

      return Membership.of({
        machine,
        pickMachine,
        describe,
        announce: (url) =>
          sql`UPDATE vibes_nodes SET url = ${url} WHERE node_id = ${nodeId}`.pipe(Effect.ignore)
      })
    })
  )
