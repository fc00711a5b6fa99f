import * as fs from "node:fs"
import * as http from "node:http"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Chunk, Context, DateTime, Duration, Effect, Either, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { JobSpec, RetryPolicy, SshTarget, type ExecuteOutput, type JobOutput } from "../../rpc/Jobs.js"
import { clientLayer } from "../support/Attach.js"
import * as Processes from "../support/Processes.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.startWith({ jobKillGrace: Duration.seconds(1) }))

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const sh = (script: string, extra: Partial<ConstructorParameters<typeof JobSpec>[0]> = {}) =>
  JobSpec.make({ command: script, shell: true, ...extra })

const text = (outputs: ReadonlyArray<ExecuteOutput | JobOutput>, stream: string) =>
  outputs.flatMap((o) => (o._tag === "JobLog" && o.stream === stream ? [o.chunk] : [])).join("")

/** Follows a job's output until `done` holds for the stdout text so far. */
const untilStdout = (rpc: Client.Client, jobId: string, done: (stdout: string) => boolean) =>
  rpc.Jobs.Logs({ jobId, follow: true }).pipe(
    Stream.scan("", (acc, o) => (o._tag === "JobLog" && o.stream === "stdout" ? acc + o.chunk : acc)),
    Stream.takeUntil(done),
    Stream.runDrain
  )

/** A REST call with the node's token; the body parsed as JSON when it is JSON. */
const rest = (server: TestServer.Running, route: string, init: RequestInit = {}) =>
  Effect.promise(async () => {
    const response = await fetch(`${server.url}${route}`, {
      ...init,
      headers: {
        authorization: `Bearer ${server.token}`,
        "content-type": "application/json",
        ...init.headers
      }
    })
    const type = response.headers.get("content-type") ?? ""
    const body: unknown = type.includes("json") ? await response.json() : await response.text()
    return { status: response.status, body: body as Record<string, unknown> }
  })

/** Jobs submitted since the event log's head was `head`: their `job.submitted` events. */
const submittedSince = (rpc: Client.Client, head: number) =>
  rpc.Events.Read({ from: head + 1, filter: EventFilter.make({ types: ["job.submitted"] }), limit: 100 })

/** Waits for the job's end through its log stream; returns the final info. */
const finished = (rpc: Client.Client, jobId: string) =>
  Effect.zipRight(rpc.Jobs.Logs({ jobId, follow: true }).pipe(Stream.runDrain), rpc.Jobs.Get({ jobId }))

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("jobs", (it) => {
  it.scoped("Execute streams stdout and stderr apart, in order, and ends with the exit code", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const outputs = Chunk.toReadonlyArray(
        yield* Stream.runCollect(
          rpc.Jobs.Execute(sh("for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3"))
        )
      )
      expect(outputs[0]?._tag).toBe("JobAccepted")
      expect(text(outputs, "stdout")).toBe("out1\nout2\nout3\n")
      expect(text(outputs, "stderr")).toBe("err1\nerr2\nerr3\n")
      const done = outputs[outputs.length - 1]
      expect(done?._tag).toBe("JobDone")
      if (done?._tag !== "JobDone") return
      expect(done.status).toBe("failed")
      expect(done.exitCode).toBe(3)
      const accepted = outputs[0]
      if (accepted?._tag !== "JobAccepted") return
      const info = yield* rpc.Jobs.Get({ jobId: accepted.job.id })
      expect(info.status).toBe("failed")
      expect(info.exitCode).toBe(3)
      const stored = Chunk.toReadonlyArray(yield* Stream.runCollect(rpc.Jobs.Logs({ jobId: info.id })))
      expect(text(stored, "stdout")).toBe("out1\nout2\nout3\n")
      // The history has the job from submission to its end.
      const events = yield* rpc.Events.Read({
        from: 1,
        filter: EventFilter.make({ jobId: info.id }),
        limit: 100
      })
      const types = events.map((e) => e.type)
      expect(types[0]).toBe("job.submitted")
      expect(types).toContain("job.started")
      expect(types[types.length - 1]).toBe("job.done")
      const logEvents = events
        .filter((e) => e.type === "job.log")
        .map((e) => e.data as { stream: string; chunk: string })
      expect(
        logEvents
          .filter((d) => d.stream === "stdout")
          .map((d) => d.chunk)
          .join("")
      ).toBe("out1\nout2\nout3\n")
      expect(events[events.length - 1]?.data).toMatchObject({ jobId: info.id, status: "failed", exitCode: 3 })
    })
  )

  it.scoped("a job killed by a signal reports the signal", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const job = yield* rpc.Jobs.Submit(sh("echo before; kill -TERM $$; echo never"))
      const info = yield* finished(rpc, job.id)
      expect(info.status).toBe("failed")
      expect(info.exitCode).toBeNull()
      expect(info.signal).toBe("SIGTERM")
      expect(info.error).toContain("SIGTERM")
    })
  )

  it.scoped(
    "cancel kills the whole process tree; a child that ignores SIGTERM gets SIGKILL after the grace",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const job = yield* rpc.Jobs.Submit(
          sh("(trap '' TERM; exec sleep 1001) & sleep 1002 & echo started; wait")
        )
        yield* untilStdout(rpc, job.id, (out) => out.includes("started"))
        expect(Processes.ofJob(job.id).length).toBeGreaterThanOrEqual(2)
        const canceled = yield* rpc.Jobs.Cancel({ jobId: job.id })
        expect(canceled.status).toBe("canceled")
        expect(Processes.ofJob(job.id)).toEqual([])
        const logs = Chunk.toReadonlyArray(yield* Stream.runCollect(rpc.Jobs.Logs({ jobId: job.id })))
        const system = text(logs, "system")
        expect(system).toContain("cancel requested")
        expect(system).toContain("SIGKILL")
        const done = logs[logs.length - 1]
        expect(done?._tag === "JobDone" && done.status).toBe("canceled")
        // Canceling again changes nothing.
        const again = yield* rpc.Jobs.Cancel({ jobId: job.id })
        expect(again.status).toBe("canceled")
        expect(again.finishedAt).toEqual(canceled.finishedAt)
      })
  )

  it.scoped("a timeout stops the attempt and the job ends timed out", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const job = yield* rpc.Jobs.Submit(sh("echo go; exec sleep 1003", { timeoutMs: 300 }))
      const info = yield* finished(rpc, job.id)
      expect(info.status).toBe("timed_out")
      expect(info.signal).toBe("SIGTERM")
      expect(Processes.ofJob(job.id)).toEqual([])
    })
  )

  it.scoped("a delayed job does not start before runAt", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const runAt = DateTime.unsafeMake(Date.now() + 1500)
      const job = yield* rpc.Jobs.Submit(sh("echo ran", { runAt }))
      expect(job.status).toBe("queued")
      const info = yield* finished(rpc, job.id)
      expect(info.status).toBe("succeeded")
      const started = info.startedAt
      expect(started).not.toBeNull()
      if (started === null) return
      expect(DateTime.toEpochMillis(started)).toBeGreaterThanOrEqual(DateTime.toEpochMillis(runAt))
    })
  )

  it.scoped("retries back off exponentially and the last failure dead-letters the job", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const job = yield* rpc.Jobs.Submit(
        sh("echo attempt $VIBES_JOB_ATTEMPT; exit 4", {
          retry: RetryPolicy.make({ maxAttempts: 3, initialDelayMs: 300, factor: 2 })
        })
      )
      const info = yield* finished(rpc, job.id)
      expect(info.status).toBe("dead")
      expect(info.attempts).toBe(3)
      expect(info.exitCode).toBe(4)
      const logs = Chunk.toReadonlyArray(yield* Stream.runCollect(rpc.Jobs.Logs({ jobId: job.id })))
      expect(text(logs, "stdout")).toBe("attempt 1\nattempt 2\nattempt 3\n")
      expect(text(logs, "system")).toContain("dead-lettered")
      const starts = yield* rpc.Events.Read({
        from: 1,
        filter: EventFilter.make({ jobId: job.id, types: ["job.started"] }),
        limit: 10
      })
      const times = starts.map((e) => DateTime.toEpochMillis(e.ts))
      expect(times.length).toBe(3)
      expect((times[1] ?? 0) - (times[0] ?? 0)).toBeGreaterThanOrEqual(300)
      expect((times[2] ?? 0) - (times[1] ?? 0)).toBeGreaterThanOrEqual(600)
    })
  )

  it.scoped(
    "output with NUL bytes and invalid UTF-8 is stored as text with U+FFFD, in rows and events alike",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const outputs = Chunk.toReadonlyArray(
          yield* Stream.runCollect(rpc.Jobs.Execute(sh("printf 'a\\000b\\377c\\n'")))
        )
        const accepted = outputs[0]
        if (accepted?._tag !== "JobAccepted") return expect(accepted?._tag).toBe("JobAccepted")
        expect(text(outputs, "stdout")).toBe("a\uFFFDb\uFFFDc\n")
        const stored = Chunk.toReadonlyArray(
          yield* Stream.runCollect(rpc.Jobs.Logs({ jobId: accepted.job.id }))
        )
        expect(text(stored, "stdout")).toBe("a\uFFFDb\uFFFDc\n")
        const events = yield* rpc.Events.Read({
          from: 1,
          filter: EventFilter.make({ jobId: accepted.job.id, types: ["job.log"] }),
          limit: 10
        })
        expect(events.map((e) => (e.data as { chunk: string }).chunk).join("")).toBe("a\uFFFDb\uFFFDc\n")
      })
  )

  it.scoped("::progress lines become progress events", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const outputs = Chunk.toReadonlyArray(
        yield* Stream.runCollect(rpc.Jobs.Execute(sh("echo '::progress 40'; echo '::progress 100'")))
      )
      const percents = outputs.flatMap((o) => (o._tag === "JobProgress" ? [o.percent] : []))
      expect(percents).toEqual([40, 100])
      const accepted = outputs[0]
      if (accepted?._tag !== "JobAccepted") return
      const info = yield* rpc.Jobs.Get({ jobId: accepted.job.id })
      expect(info.progress).toBe(100)
    })
  )

  it.scoped("a terminal job runs in a PTY and keeps its colours", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const outputs = Chunk.toReadonlyArray(
        yield* Stream.runCollect(
          rpc.Jobs.Execute(
            sh("test -t 1 && echo tty; printf '\\033[31mred\\033[0m\\n'; exit 5", { strategy: "terminal" })
          )
        )
      )
      const out = text(outputs, "stdout")
      expect(out).toContain("tty")
      expect(out).toContain("\u001b[31mred\u001b[0m")
      const done = outputs[outputs.length - 1]
      expect(done?._tag === "JobDone" && done.exitCode).toBe(5)
    })
  )

  it.scoped("bad input is refused with a typed error and changes nothing", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const before = yield* rpc.Jobs.List({ limit: 1000 })
      const refused = [
        yield* Effect.either(rpc.Jobs.Submit(JobSpec.make({ command: "true", strategy: "ssh" }))),
        yield* Effect.either(
          rpc.Jobs.Submit(
            JobSpec.make({
              command: "true",
              strategy: "ssh",
              ssh: SshTarget.make({
                host: "127.0.0.1",
                user: "nobody",
                credential: { _tag: "key-file", path: "/nonexistent/id_ed25519" }
              })
            })
          )
        ),
        yield* Effect.either(rpc.Jobs.Submit(JobSpec.make({ command: "true", cwd: "/nonexistent/dir" }))),
        yield* Effect.either(rpc.Jobs.Submit(JobSpec.make({ command: "true", cwd: "relative/dir" })))
      ]
      for (const result of refused) {
        expect(Either.isLeft(result) && result.left._tag).toBe("InvalidJobRequest")
      }
      const key = refused[1] ?? Either.right(null)
      expect(Either.isLeft(key) && key.left.message).toContain("/nonexistent/id_ed25519")
      const unknown = yield* Effect.either(rpc.Jobs.Get({ jobId: "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293" }))
      expect(Either.isLeft(unknown) && unknown.left._tag).toBe("JobNotFound")
      const cancelUnknown = yield* Effect.either(
        rpc.Jobs.Cancel({ jobId: "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293" })
      )
      expect(Either.isLeft(cancelUnknown) && cancelUnknown.left._tag).toBe("JobNotFound")
      const after = yield* rpc.Jobs.List({ limit: 1000 })
      expect(after.length).toBe(before.length)
    })
  )

  it.scoped(
    "text a program or the database cannot take, or too much of it, is refused naming the field, and nothing is stored",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const server = yield* Node
        const before = (yield* rpc.Jobs.List({ limit: 1000 })).length
        const { head } = yield* rpc.Events.Head()
        const kib = (n: number) => "x".repeat(n * 1024)
        // A file just outside the secrets directory: a secret name must never reach it.
        fs.writeFileSync(path.join(server.dataDir, "outside"), "not a secret\n", { mode: 0o600 })
        const ssh = (credential: SshTarget["credential"]) =>
          SshTarget.make({ host: "127.0.0.1", user: "nobody", credential })
        const cases: ReadonlyArray<readonly [string, JobSpec]> = [
          ["command", JobSpec.make({ command: "echo\u0000" })],
          ["args.1", JobSpec.make({ command: "echo", args: ["ok", "a\u0000b"] })],
          ["env.GREETING", sh("true", { env: { GREETING: "hi\u0000" } })],
          ["env.BAD\uFFFDNAME", sh("true", { env: { "BAD\u0000NAME": "x" } })],
          ["env.A=B", sh("true", { env: { "A=B": "x" } })],
          ["env.", sh("true", { env: { "": "x" } })],
          ["labels.team", sh("true", { labels: { team: "a\u0000" } })],
          ["cwd", sh("true", { cwd: "/tmp\u0000" })],
          ["args.0", JobSpec.make({ command: "echo", args: [kib(200)] })],
          ["env.BIG", sh("true", { env: { BIG: kib(130) } })],
          ["args", JobSpec.make({ command: "echo", args: Array.from({ length: 10 }, () => kib(30)) })],
          [
            "ssh.credential.passphraseSecret",
            sh("true", {
              strategy: "ssh",
              ssh: ssh({ _tag: "key-file", path: "/nonexistent/id_ed25519", passphraseSecret: "../outside" })
            })
          ],
          [
            "ssh.credential.secret",
            sh("true", { strategy: "ssh", ssh: ssh({ _tag: "password", secret: ".." }) })
          ],
          [
            "ssh.user",
            sh("true", {
              strategy: "ssh",
              ssh: SshTarget.make({ host: "h", user: "a\u0000", credential: { _tag: "agent" } })
            })
          ]
        ]
        for (const [field, spec] of cases) {
          const refused = yield* Effect.flip(rpc.Jobs.Submit(spec))
          expect(refused._tag).toBe("InvalidJobRequest")
          if (refused._tag === "InvalidJobRequest") expect(refused.field).toBe(field)
          expect(refused.message.length).toBeLessThan(400)
        }
        const traversal = yield* Effect.flip(rpc.Jobs.Submit(cases[11]?.[1] ?? sh("true")))
        expect(traversal.message).toContain("not a secret name")

        // Over REST, JSON can carry what msgpack cannot: unpaired surrogates.
        for (const [field, json] of [
          ["command", '{"command":"echo \\ud800"}'],
          ["args.0", '{"command":"echo","args":["\\udc00x"]}'],
          ["env.X", '{"command":"true","env":{"X":"\\ud83d"}}'],
          ["labels.team", '{"command":"true","labels":{"team":"\\ud83d"}}'],
          ["args.0", '{"command":"echo","args":["a\\u0000"]}']
        ] as const) {
          const refused = yield* rest(server, "/api/jobs", { method: "POST", body: json })
          expect(refused.status).toBe(400)
          expect(refused.body).toMatchObject({ error: "InvalidJobRequest", field })
        }
        expect((yield* rpc.Jobs.List({ limit: 1000 })).length).toBe(before)
        expect(yield* submittedSince(rpc, head)).toEqual([])
        // Just under the limits is accepted and runs.
        const large = yield* rpc.Jobs.Submit(
          JobSpec.make({ command: "true", args: Array.from({ length: 6 }, () => kib(30)) })
        )
        expect((yield* finished(rpc, large.id)).status).toBe("succeeded")
        // Quoted, backslashes double and double again as JSON: the event's command line is cut to fit.
        const quoted = yield* rpc.Jobs.Submit(
          JobSpec.make({ command: "true", args: Array.from({ length: 3 }, () => "\\".repeat(30 * 1024)) })
        )
        const submitted = (yield* submittedSince(rpc, head)).filter((e) => e.jobId === quoted.id)
        expect(submitted).toHaveLength(1)
        expect((submitted[0]?.data as { command: string }).command.length).toBeLessThanOrEqual(16 * 1024)
      })
  )

  it.scoped("a chunked body over the limit is refused while it streams in, not read whole", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const rpc = yield* client
      const { head } = yield* rpc.Events.Head()
      const piece = Buffer.alloc(64 * 1024, "x")
      const target = new URL(`${server.url}/api/jobs`)
      // Sends up to twice the 1 MiB limit (of 5 MiB), then waits for the server's answer: a 413
      // or a closed connection. A server that reads the whole body never answers.
      const outcome = yield* Effect.async<{ readonly sent: number; readonly how: string }>((resume) => {
        let sent = 0
        let settled = false
        const settle = (how: string) => {
          if (settled) return
          settled = true
          request.destroy()
          resume(Effect.succeed({ sent, how }))
        }
        const request = http.request(
          {
            host: target.hostname,
            port: target.port,
            path: target.pathname,
            method: "POST",
            headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" }
          },
          (response) => settle(`status ${response.statusCode}`)
        )
        request.on("error", (error: NodeJS.ErrnoException) => settle(`closed (${error.code})`))
        request.write('{"command":"true","args":["')
        const next = () => {
          if (settled || sent >= 2 * 1024 * 1024) return
          sent += piece.length
          request.write(piece, next)
        }
        next()
        return Effect.sync(() => request.destroy())
      }).pipe(Effect.timeout("30 seconds"))
      expect(outcome.sent).toBeLessThanOrEqual(2 * 1024 * 1024)
      expect(outcome.how).toMatch(/^status 413|^closed/)
      // Nothing was submitted, and the node answers as before.
      expect(yield* submittedSince(rpc, head)).toEqual([])
      expect((yield* rest(server, "/api/jobs?limit=1")).status).toBe(200)
    })
  )

  it.scoped("REST: submit, get, list, logs (JSON and SSE), cancel; bad input is a 400", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const auth = { authorization: `Bearer ${server.token}` }
      const call = (path: string, init: RequestInit = {}) =>
        Effect.promise(async () => {
          const response = await fetch(`${server.url}${path}`, {
            ...init,
            headers: { ...auth, "content-type": "application/json", ...init.headers }
          })
          const type = response.headers.get("content-type") ?? ""
          const body: unknown = type.includes("json") ? await response.json() : await response.text()
          return {
            status: response.status,
            body: body as Record<string, unknown> & Array<Record<string, unknown>>
          }
        })
      const post = (path: string, body: unknown) => call(path, { method: "POST", body: JSON.stringify(body) })

      const created = yield* post("/api/jobs", { command: "echo rest-out; echo rest-err >&2", shell: true })
      expect(created.status).toBe(201)
      const id = String(created.body["id"])
      // The SSE stream follows the job to its end.
      const sse = yield* call(`/api/jobs/${id}/logs?follow=1`)
      expect(sse.status).toBe(200)
      const frames = String(sse.body)
      expect(frames).toContain("event: log")
      expect(frames).toContain("rest-out")
      expect(frames).toMatch(/event: done\ndata: .*"status":"succeeded"/)
      const logs = yield* call(`/api/jobs/${id}/logs`)
      expect(logs.status).toBe(200)
      const entries = logs.body["logs"] as unknown as Array<{ _tag: string; stream?: string; chunk?: string }>
      expect(
        entries
          .filter((e) => e.stream === "stdout")
          .map((e) => e.chunk)
          .join("")
      ).toBe("rest-out\n")
      expect(
        entries
          .filter((e) => e.stream === "stderr")
          .map((e) => e.chunk)
          .join("")
      ).toBe("rest-err\n")
      const one = yield* call(`/api/jobs/${id}`)
      expect(one.status).toBe(200)
      expect(one.body["status"]).toBe("succeeded")
      expect(one.body["exitCode"]).toBe(0)
      const listed = yield* call("/api/jobs?limit=5")
      expect(listed.status).toBe(200)
      expect(listed.body.length).toBeLessThanOrEqual(5)
      expect(listed.body[0]?.["id"]).toBe(id)

      const long = yield* post("/api/jobs", { command: "sleep", args: ["1004"] })
      const canceled = yield* post("/api/jobs/cancel", { jobId: long.body["id"] })
      expect(canceled.status).toBe(200)
      expect(canceled.body["status"]).toBe("canceled")

      for (const limit of ["0", "1001", "abc", "-1"]) {
        const bad = yield* call(`/api/jobs?limit=${limit}`)
        expect(bad.status).toBe(400)
        expect(String(bad.body["message"])).toContain("limit")
      }
      const invalid = [
        yield* post("/api/jobs", { command: "" }),
        yield* post("/api/jobs", { command: "   " }),
        yield* post("/api/jobs", { command: "true", strategy: "docker" }),
        yield* post("/api/jobs", { command: "true", strategy: "ssh", ssh: { host: "h", user: "u" } }),
        yield* post("/api/jobs", { command: "true", unknownField: 1 }),
        yield* call("/api/jobs", { method: "POST", body: "{not json" }),
        yield* post("/api/jobs/cancel", { jobId: "../../etc/passwd" }),
        yield* call("/api/jobs/not-a-uuid")
      ]
      for (const response of invalid) {
        expect(response.status).toBe(400)
        expect(typeof response.body["message"]).toBe("string")
      }
      // A body of the wrong shape names the field too.
      expect(invalid[2]?.body).toMatchObject({ error: "BadRequest", field: "strategy" })
      // A sequence number beyond what the database holds is bad input, not an outage.
      const beyond = yield* call(`/api/jobs/${id}/logs?after=99999999999999999999`)
      expect(beyond.status).toBe(400)
      expect((yield* call("/api/jobs/0193d9b4-7c1e-7a2b-9c3d-4e5f60718293")).status).toBe(404)
      expect(
        (yield* post("/api/jobs/cancel", { jobId: "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293" })).status
      ).toBe(404)
      const metrics = yield* call("/metrics")
      expect(String(metrics.body)).toMatch(/vibes_jobs_finished_total\{[^}]*status="succeeded"[^}]*\} [1-9]/)
      expect(String(metrics.body)).toContain("vibes_jobs_running")
      expect(String(metrics.body)).toContain("vibes_job_log_chunks_total")
      const anonymous = yield* Effect.promise(() => fetch(`${server.url}/api/jobs`))
      expect(anonymous.status).toBe(401)
      const anonymousPost = yield* Effect.promise(() =>
        fetch(`${server.url}/api/jobs`, { method: "POST", body: JSON.stringify({ command: "true" }) })
      )
      expect(anonymousPost.status).toBe(401)
    })
  )
})
