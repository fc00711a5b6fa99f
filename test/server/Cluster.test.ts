import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Fiber, Option, Redacted, Ref, type Scope, Stream } from "effect"
import * as RunnerAddress from "@effect/cluster/RunnerAddress"
import * as Runners from "@effect/cluster/Runners"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { Socket } from "@effect/platform/Socket"
import * as RpcClient from "@effect/rpc/RpcClient"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"
import * as RunnerTls from "../../infra/cluster/RunnerTls.js"
import type * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import { isFinal, type JobInfo, JobSpec, RetryPolicy } from "../../rpc/Jobs.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { eventually } from "../support/Attach.js"
import * as ClusterNodes from "../support/ClusterNodes.js"
import * as SseClient from "../support/SseClient.js"
import { readableTempDir } from "../support/TempDir.js"
import * as Tmux from "../support/Tmux.js"
import * as Vibes from "../support/VibesProcess.js"

const encoder = new TextEncoder()

/** Logs where job `jobId` stands and what it printed, to say why a test failed. */
const explain = (client: Client.Client, jobId: string, why: string) =>
  Effect.gen(function* () {
    const info = yield* client.Jobs.Get({ jobId }).pipe(Effect.option)
    const output = yield* client.Jobs.Logs({ jobId, follow: false, after: 0 }).pipe(
      Stream.runCollect,
      Effect.option
    )
    yield* Effect.logError(
      `job ${jobId} ${why}: ${JSON.stringify(Option.getOrNull(info))}; its output: ${JSON.stringify(
        Option.map(output, (chunk) => [...chunk])
      )}`
    )
  }).pipe(Effect.timeout("10 seconds"), Effect.ignore)

/** Waits until job `jobId` is final, as `client` sees it; on a timeout, says where it stands. */
const finished = (client: Client.Client, jobId: string, timeout = 60_000) =>
  eventually(
    Effect.map(client.Jobs.Get({ jobId }).pipe(Effect.option), (info) =>
      Option.filter(info, (i) => isFinal(i.status))
    ),
    `job ${jobId} to finish`,
    timeout
  ).pipe(Effect.tapError(() => explain(client, jobId, "is not final")))

/** Waits until job `jobId` is final and expects it to have succeeded; if not, says why. */
const succeeded = (client: Client.Client, jobId: string) =>
  Effect.gen(function* () {
    const done = yield* finished(client, jobId)
    if (done.status !== "succeeded") yield* explain(client, jobId, `ended ${done.status}`)
    expect(done.status).toBe("succeeded")
    return done
  })

/** Every event of the log, read page by page. */
const allEvents = (client: Client.Client) =>
  Effect.gen(function* () {
    const events: Array<StoredEvent> = []
    let from = 1
    for (;;) {
      const page = yield* client.Events.Read({ from, filter: EventFilter.make({}), limit: 10_000 })
      events.push(...page)
      const last = page.at(-1)
      if (last === undefined || page.length < 10_000) return events
      from = last.offset + 1
    }
  })

/** The log has every offset from its first to its head once, and no event id twice. */
const expectGapless = (events: ReadonlyArray<StoredEvent>) => {
  const first = events[0]?.offset ?? 1
  events.forEach((event, i) => expect(event.offset).toBe(first + i))
  expect(new Set(events.map((event) => event.id)).size).toBe(events.length)
}

/** A runner `Ping` over `protocol`, as one node checks on another. */
const pingRunner = <E>(
  protocol: Effect.Effect<RpcClient.Protocol["Type"], E, RpcSerialization.RpcSerialization | Scope.Scope>
) =>
  Effect.gen(function* () {
    const client = yield* Runners.makeRpcClient.pipe(
      Effect.provideService(RpcClient.Protocol, yield* protocol)
    )
    yield* client.Ping()
  }).pipe(
    Effect.scoped,
    Effect.provide(RpcSerialization.layerMsgPack),
    Effect.timeout("5 seconds"),
    Effect.exit
  )

const shellJob = (command: string, attempts = 1) =>
  JobSpec.make({
    command,
    shell: true,
    retry: RetryPolicy.make({ maxAttempts: attempts, initialDelayMs: 100 })
  })

describe("a cluster of vibes nodes", () => {
  it.scopedLive(
    "sessions and jobs created through one node run on their owners, and every node answers for every entity",
    () =>
      Effect.gen(function* () {
        const cluster = yield* ClusterNodes.make("clroute", 3)
        yield* cluster.settled(3)
        const [a, b, c] = cluster.nodes
        if (a === undefined || b === undefined || c === undefined) return expect.unreachable()

        // A session is placed on the node named, and its id names that node's machine.
        const onB = yield* a.client.Sessions.Create(CreateSession.make({ command: "cat", node: b.nodeId }))
        const onC = yield* a.client.Sessions.Create(CreateSession.make({ command: "cat", node: c.nodeId }))
        expect(onB.nodeId).toBe(b.nodeId)
        expect(onB.id.startsWith(`${b.nodeId}_`)).toBe(true)
        expect(onC.nodeId).toBe(c.nodeId)
        // Unnamed: the least loaded node (A has none).
        const placed = yield* b.client.Sessions.Create(CreateSession.make({ command: "cat" }))
        expect(placed.nodeId).toBe(a.nodeId)

        // Input through every node reaches the program; every node sees the same screen.
        for (const session of [onB, onC, placed]) {
          for (const via of cluster.nodes) {
            yield* via.client.Sessions.Input({
              sessionId: session.id,
              data: encoder.encode(`via-${via.nodeId}\r`)
            })
          }
          for (const via of cluster.nodes) {
            yield* eventually(
              Effect.map(via.client.Sessions.Snapshot({ sessionId: session.id }), (screen) =>
                cluster.nodes.every((n) => screen.text.includes(`via-${n.nodeId}`))
                  ? Option.some(screen)
                  : Option.none()
              ),
              `every node's input on the screen of ${session.id} as ${via.nodeId} sees it`
            )
          }
        }

        // A named node that is not in the cluster is refused, and nothing is created.
        const before = (yield* a.client.Sessions.List({})).length
        const refused = yield* a.client.Sessions.Create(
          CreateSession.make({ command: "cat", node: "nope" })
        ).pipe(Effect.flip)
        expect(refused._tag).toBe("InvalidSessionRequest")
        expect(refused.message).toContain("no live node 'nope'")
        expect((yield* a.client.Sessions.List({})).length).toBe(before)

        // Jobs: submitted through A, run on whichever node owns their shard, answered by every node.
        const jobs: Array<JobInfo> = []
        while (jobs.length < 30 && new Set(jobs.map((j) => j.nodeId)).size < 2) {
          const submitted = yield* a.client.Jobs.Submit(shellJob(`echo job-${jobs.length}`))
          jobs.push(yield* finished(a.client, submitted.id))
        }
        expect(new Set(jobs.map((j) => j.nodeId)).size).toBeGreaterThanOrEqual(2)
        for (const job of jobs) {
          expect(job.status).toBe("succeeded")
          for (const via of cluster.nodes) {
            const seen = yield* via.client.Jobs.Get({ jobId: job.id })
            expect(seen.status).toBe("succeeded")
            expect(seen.nodeId).toBe(job.nodeId)
          }
        }

        // REST and SSE on every node: a job's logs, and the events of jobs that ran elsewhere.
        const auth = { authorization: `Bearer ${cluster.token}` }
        for (const via of cluster.nodes) {
          const job = jobs.find((j) => j.nodeId !== via.nodeId) ?? jobs[0]
          if (job === undefined) return expect.unreachable()
          const response = yield* Effect.promise(() =>
            fetch(`${via.serving.url}/api/jobs/${job.id}/logs`, { headers: auth })
          )
          expect(response.status).toBe(200)
          expect(yield* Effect.promise(() => response.text())).toContain(`job-${jobs.indexOf(job)}`)
          const sse = yield* SseClient.connect(`${via.serving.url}/api/events?from=1&types=job.done`, auth)
          expect(sse.status).toBe(200)
          yield* sse.until((client) => jobs.every((j) => client.frames.some((f) => f.data.includes(j.id))))
        }
        // B's gauges, once its heartbeat has seen the balanced assignment: 300 shards of its own
        // machine's group and a third of the shared one (a shard can still be moving right after
        // settling).
        const metrics = yield* eventually(
          Effect.promise(() =>
            fetch(`${b.serving.url}/metrics`, { headers: auth }).then((r) => r.text())
          ).pipe(
            Effect.map((text) =>
              /vibes_cluster_shards\{[^}]*\} 400\b/.test(text) ? Option.some(text) : Option.none()
            )
          ),
          "B's shard gauge at 400"
        )
        expect(metrics).toMatch(/vibes_cluster_nodes\{[^}]*state="up"[^}]*\} 3/)

        // The CLI's view.
        const [cli, table, help] = yield* Effect.all(
          [
            Vibes.run(
              ["cluster", "--json"],
              Vibes.childEnv({ VIBES_URL: c.serving.url, VIBES_TOKEN: cluster.token })
            ),
            Vibes.run(["cluster"], Vibes.childEnv({ VIBES_URL: a.serving.url, VIBES_TOKEN: cluster.token })),
            Vibes.run(["cluster", "--help"])
          ],
          { concurrency: "unbounded" }
        )
        expect(cli.code).toBe(0)
        const parsed = JSON.parse(cli.stdout) as {
          mode: string
          nodes: Array<{ nodeId: string; state: string }>
        }
        expect(parsed.mode).toBe("cluster")
        expect(parsed.nodes.filter((n) => n.state === "up").length).toBe(3)
        expect(table.code).toBe(0)
        expect(table.stdout).toContain("cluster: 3 of 3 nodes up")
        expect(table.stdout).toContain(`m-${c.nodeId}`)
        expect(help.code).toBe(0)
        expect(help.stdout).toContain("System.Cluster")

        // B's runner port answers only peers with the cluster secret (here the admin token).
        const runner = RunnerAddress.make("127.0.0.1", b.runnerPort)
        const withKey = (secret: string) =>
          pingRunner(
            Effect.flatMap(Runners.RpcClientProtocol, (make) => make(runner)).pipe(
              Effect.provide(RunnerTls.clientProtocolLayer(RunnerTls.runnerKey(Redacted.make(secret))))
            )
          )
        const plain = pingRunner(
          Effect.flatMap(NodeSocket.makeNet({ host: runner.host, port: runner.port }), (socket) =>
            RpcClient.makeProtocolSocket().pipe(Effect.provideService(Socket, socket))
          ).pipe(Effect.orDie)
        )
        expect(Exit.isSuccess(yield* withKey(cluster.token))).toBe(true)
        expect(Exit.isFailure(yield* withKey(`not ${cluster.token}`))).toBe(true)
        expect(Exit.isFailure(yield* plain)).toBe(true)
        // The operator sees who was turned away and why.
        yield* eventually(
          Effect.sync(() =>
            b.serving.lines.some((line) => line.includes("runner connection from 127.0.0.1 refused"))
              ? Option.some(true)
              : Option.none()
          ),
          "B to log the refused runner connections",
          10_000
        )

        // The cluster as every node reports it.
        for (const via of cluster.nodes) {
          const info = yield* via.client.System.Cluster()
          expect(info.mode).toBe("cluster")
          expect(info.nodeId).toBe(via.nodeId)
          expect(
            info.nodes
              .filter((n) => n.state === "up")
              .map((n) => n.nodeId)
              .sort()
          ).toEqual(cluster.nodes.map((n) => n.nodeId).sort())
          const groups = new Map(info.groups.map((g) => [g.name, g]))
          expect(groups.get("default")?.owners.length).toBe(3)
          for (const node of cluster.nodes)
            expect(groups.get(`m-${node.nodeId}`)?.owners).toEqual([node.nodeId])
        }
      }),
    240_000
  )

  it.scopedLive(
    "kill -9 of a node while jobs run: its jobs retry elsewhere, its sessions are lost or restarted per policy, nothing acknowledged is lost",
    () =>
      Effect.gen(function* () {
        const cluster = yield* ClusterNodes.make("clkill", 3)
        yield* cluster.settled(3)
        const [a, b, c] = cluster.nodes
        if (a === undefined || b === undefined || c === undefined) return expect.unreachable()

        const keep = yield* a.client.Sessions.Create(
          CreateSession.make({ command: "sleep", args: ["600"], node: c.nodeId, restartPolicy: "always" })
        )
        const drop = yield* a.client.Sessions.Create(
          CreateSession.make({ command: "sleep", args: ["600"], node: c.nodeId })
        )
        // Jobs that run until the kill (they wait for a file made after it), until at least two
        // run on the victim.
        // Looked for by the jobs, which may run as the sandbox's user.
        const gate = path.join(yield* readableTempDir("vibes-clkill-"), "killed")
        const jobs: Array<JobInfo> = []
        const onVictim = () => jobs.filter((j) => j.nodeId === c.nodeId).length
        while (jobs.length < 40 && onVictim() < 2) {
          const job = yield* a.client.Jobs.Submit(
            shellJob(`echo started; while [ ! -e ${gate} ]; do sleep 0.1; done; echo finished`, 3)
          )
          jobs.push(
            yield* eventually(
              Effect.map(a.client.Jobs.Get({ jobId: job.id }), (info) =>
                info.status === "running" ? Option.some(info) : Option.none()
              ),
              `job ${job.id} to start`
            )
          )
          // Its first output is stored (acknowledged) before the kill.
          yield* eventually(
            Effect.map(
              a.client.Jobs.Logs({ jobId: job.id, follow: false }).pipe(Stream.runCollect),
              (logs) =>
                Chunk.some(logs, (o) => o._tag === "JobLog" && o.chunk.includes("started"))
                  ? Option.some(logs)
                  : Option.none()
            ),
            `job ${job.id} to print`
          )
        }
        expect(onVictim()).toBeGreaterThanOrEqual(2)

        // A terminal on A's machine, attached through the victim: `vibes attach` is given the
        // victim's URL and B's, and takes the first that answers.
        const shell = yield* a.client.Sessions.Create(
          CreateSession.make({ command: "/bin/sh", node: a.nodeId })
        )
        const term = yield* Tmux.make
        yield* term.keys(
          `${Vibes.commandLine} attach ${shell.id} --url ${c.serving.url},${b.serving.url} --token ${cluster.token}`,
          "Enter"
        )
        yield* term.keys("echo before-$((2*3))", "Enter")
        yield* Tmux.paneShows(term.pane, /^before-6$/m)
        const attachments = a.client.Events.Read({
          from: 1,
          filter: EventFilter.make({ types: ["session.attached"], sessionId: shell.id }),
          limit: 100
        })
        expect((yield* attachments).length).toBe(1)

        yield* cluster.kill(2)
        const killedAt = Date.now()
        fs.writeFileSync(gate, "")
        // A call right after the kill gets its answer once the shard has moved.
        const victimJob = jobs.find((j) => j.nodeId === c.nodeId)
        if (victimJob === undefined) return expect.unreachable()
        const status = yield* a.client.Jobs.Get({ jobId: victimJob.id })
        expect(status.id).toBe(victimJob.id)
        // Its stored logs are read from the event log: the call answers while its entity moves.
        const logs = yield* a.client.Jobs.Logs({ jobId: victimJob.id, follow: false }).pipe(Stream.runCollect)
        expect(Chunk.some(logs, (o) => o._tag === "JobLog" && o.chunk.includes("started"))).toBe(true)

        for (const job of jobs) {
          const done = yield* succeeded(a.client, job.id)
          if (job.nodeId === c.nodeId) {
            expect(done.nodeId).not.toBe(c.nodeId)
            expect(done.attempts).toBe(2)
          }
        }
        const failoverMillis = Date.now() - killedAt

        // The terminal reattached through B by itself, resuming where it was; typing goes on.
        yield* eventually(
          Effect.map(attachments, (events) => (events.length === 2 ? Option.some(events) : Option.none())),
          "the terminal to reattach through another node"
        )
        yield* term.keys("echo after-$((3*3))", "Enter")
        yield* Tmux.paneShows(term.pane, /^after-9$/m)
        expect(term.pane().match(/^before-6$/gm)?.length).toBe(1)

        // The CLI given the nodes' URLs goes on with a node that answers.
        const fallback = yield* Vibes.run(
          ["status", "--json"],
          Vibes.childEnv({ VIBES_URL: `${c.serving.url},${a.serving.url}`, VIBES_TOKEN: cluster.token })
        )
        expect(fallback.code).toBe(0)
        expect(JSON.parse(fallback.stdout)).toMatchObject({ url: a.serving.url, nodeId: a.nodeId })

        // The always-restart session was started again on a live machine; the other is lost.
        const replaced = yield* eventually(
          Effect.map(a.client.Sessions.Get({ sessionId: keep.id }), (info) =>
            info.replacedBy !== null ? Option.some(info) : Option.none()
          ),
          "the lost session to be restarted elsewhere"
        )
        expect(replaced.state).toBe("lost")
        const replacement = yield* a.client.Sessions.Get({ sessionId: replaced.replacedBy ?? "" })
        expect(replacement.state).toBe("running")
        expect(replacement.nodeId).not.toBe(c.nodeId)
        expect(replacement.command).toBe("sleep")
        const dropped = yield* a.client.Sessions.Get({ sessionId: drop.id })
        expect(dropped.state).toBe("lost")
        expect(dropped.replacedBy).toBeNull()

        // The history: gapless, no duplicate, and every job's story complete exactly once.
        const events = yield* allEvents(a.client)
        expectGapless(events)
        for (const job of jobs) {
          const mine = events.filter((e) => e.jobId === job.id)
          expect(mine.filter((e) => e.type === "job.submitted").length).toBe(1)
          expect(mine.filter((e) => e.type === "job.done").length).toBe(1)
        }
        expect(events.some((e) => e.type === "session.lost" && e.sessionId === keep.id)).toBe(true)
        expect(events.some((e) => e.type === "session.replaced" && e.sessionId === keep.id)).toBe(true)
        yield* Effect.logInfo(`all jobs of the killed node finished ${failoverMillis} ms after the kill`)
      }),
    240_000
  )

  it.scopedLive(
    "SIGTERM drains a node under load with zero failed client calls",
    () =>
      Effect.gen(function* () {
        const cluster = yield* ClusterNodes.make("cldrain", 3)
        yield* cluster.settled(3)
        const [a, b] = cluster.nodes
        if (a === undefined || b === undefined) return expect.unreachable()

        const failures = yield* Ref.make<Array<string>>([])
        const submitted = yield* Ref.make<Array<string>>([])
        const calls = yield* Ref.make(0)
        // Clients of A and B keep submitting jobs and asking for them while C drains.
        const load = (client: Client.Client) =>
          Effect.gen(function* () {
            const job = yield* client.Jobs.Submit(shellJob("sleep 0.3; echo ok"))
            yield* Ref.update(submitted, (ids) => [...ids, job.id])
            yield* client.Jobs.Get({ jobId: job.id })
            yield* Ref.update(calls, (n) => n + 2)
          }).pipe(
            Effect.catchAll((error) => Ref.update(failures, (list) => [...list, String(error)])),
            Effect.forever
          )
        const fibers = yield* Effect.all([Effect.fork(load(a.client)), Effect.fork(load(b.client))])
        yield* eventually(
          Effect.map(Ref.get(calls), (n) => (n >= 20 ? Option.some(n) : Option.none())),
          "load to be under way"
        )
        const code = yield* cluster.drain(2)
        expect(code).toBe(0)
        const atExit = yield* Ref.get(calls)
        // The survivors go on serving after the drain.
        yield* eventually(
          Effect.map(Ref.get(calls), (n) => (n >= atExit + 20 ? Option.some(n) : Option.none())),
          "load to go on after the drain"
        )
        yield* Effect.forEach(fibers, Fiber.interrupt, { discard: true })
        expect(yield* Ref.get(failures)).toEqual([])
        for (const jobId of yield* Ref.get(submitted)) {
          yield* succeeded(a.client, jobId)
        }
      }),
    240_000
  )

  it.scopedLive(
    "a rolling restart of every node while a producer submits continuously: no gap, no duplicate, no lost job",
    () =>
      Effect.gen(function* () {
        const cluster = yield* ClusterNodes.make("clroll", 3)
        yield* cluster.settled(3)

        const acknowledged = yield* Ref.make<Array<string>>([])
        const restarting = yield* Ref.make<ReadonlySet<number>>(new Set())
        // The producer sends each job to a node that is not restarting; a call that fails was not
        // acknowledged and is sent again elsewhere. So was one that its client's close interrupted
        // (picked just before its node began restarting): `Effect.option` would let that
        // interruption end the producer.
        let turn = 0
        const produce = Effect.gen(function* () {
          const busy = yield* Ref.get(restarting)
          const candidates = cluster.nodes.flatMap((node, i) => (busy.has(i) ? [] : [node]))
          const node = candidates[turn++ % candidates.length]
          if (node === undefined) return
          const job = yield* node.client.Jobs.Submit(shellJob(`echo produced-${turn}`)).pipe(Effect.exit)
          if (Exit.isSuccess(job)) yield* Ref.update(acknowledged, (ids) => [...ids, job.value.id])
        }).pipe(Effect.forever)
        const producer = yield* Effect.fork(produce)

        for (let i = 0; i < 3; i++) {
          const before = (yield* Ref.get(acknowledged)).length
          yield* eventually(
            Effect.map(Ref.get(acknowledged), (ids) =>
              ids.length >= before + 10 ? Option.some(ids) : Option.none()
            ),
            "the producer to make progress"
          )
          yield* Ref.update(restarting, (set) => new Set([...set, i]))
          expect(yield* cluster.drain(i)).toBe(0)
          yield* cluster.start(i)
          yield* Ref.update(restarting, (set) => new Set([...set].filter((n) => n !== i)))
          yield* cluster.settled(3, i)
        }
        const before = (yield* Ref.get(acknowledged)).length
        yield* eventually(
          Effect.map(Ref.get(acknowledged), (ids) =>
            ids.length >= before + 10 ? Option.some(ids) : Option.none()
          ),
          "the producer to make progress after the restarts"
        )
        yield* Fiber.interrupt(producer)

        const client = cluster.nodes[0]?.client
        if (client === undefined) return expect.unreachable()
        const ids = yield* Ref.get(acknowledged)
        for (const jobId of ids) {
          yield* succeeded(client, jobId)
        }
        const events = yield* allEvents(client)
        expectGapless(events)
        const submittedEvents = events.filter((e) => e.type === "job.submitted")
        const doneEvents = events.filter((e) => e.type === "job.done")
        for (const jobId of ids) {
          expect(submittedEvents.filter((e) => e.jobId === jobId).length).toBe(1)
          expect(doneEvents.filter((e) => e.jobId === jobId).length).toBe(1)
        }
        expect(events.filter((e) => e.type === "system.started").length).toBe(6)
      }),
    300_000
  )
})
