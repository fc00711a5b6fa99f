import { expect, layer } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import { Chunk, Context, Effect, Either, Layer, Option, Schedule, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { JobSpec, SshTarget, type ExecuteOutput, type JobOutput } from "../../rpc/Jobs.js"
import { clientLayer } from "../support/Attach.js"
import * as Processes from "../support/Processes.js"
import * as Sshd from "../support/Sshd.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

class Env extends Context.Tag("test/Env")<
  Env,
  { readonly server: TestServer.Running; readonly sshd: Sshd.Sshd }
>() {}

const EnvLive = Layer.scoped(
  Env,
  Effect.gen(function* () {
    const sshd = yield* Sshd.start
    // The server checks host keys against the sshd's known_hosts by default.
    const server = yield* TestServer.startWith({ sshKnownHosts: sshd.knownHostsPath })
    return { server, sshd }
  })
)

const client = Effect.flatMap(Env, ({ server }) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const remote = (
  sshd: Sshd.Sshd,
  command: string,
  target: Partial<ConstructorParameters<typeof SshTarget>[0]> = {}
) =>
  JobSpec.make({
    command,
    shell: true,
    strategy: "ssh",
    ssh: SshTarget.make({
      host: sshd.host,
      port: sshd.port,
      user: sshd.user,
      credential: { _tag: "key-file", path: sshd.userKeyPath },
      ...target
    })
  })

const text = (outputs: ReadonlyArray<ExecuteOutput | JobOutput>, stream: string) =>
  outputs.flatMap((o) => (o._tag === "JobLog" && o.stream === stream ? [o.chunk] : [])).join("")

/** Live processes with `VIBES_TEST_MARKER=marker` in their environment. */
const processesWith = (marker: string) => Effect.sync(() => Processes.withEnv("VIBES_TEST_MARKER", marker))

layer(EnvLive, { timeout: 120_000, excludeTestServices: true })("ssh jobs", (it) => {
  it.scoped("runs a remote command: stdout and stderr apart, the exit code reported", () =>
    Effect.gen(function* () {
      const { sshd } = yield* Env
      const rpc = yield* client
      const outputs = Chunk.toReadonlyArray(
        yield* Stream.runCollect(
          rpc.Jobs.Execute(remote(sshd, "echo remote-out; echo remote-err >&2; exit 9"))
        )
      )
      expect(text(outputs, "stdout")).toBe("remote-out\n")
      expect(text(outputs, "stderr")).toBe("remote-err\n")
      const done = outputs[outputs.length - 1]
      expect(done?._tag === "JobDone" && [done.status, done.exitCode]).toEqual(["failed", 9])
    })
  )

  it.scoped("streams output while the remote command runs, and cancel ends the remote process tree", () =>
    Effect.gen(function* () {
      const { sshd } = yield* Env
      const rpc = yield* client
      const marker = `vibes-ssh-cancel-${process.pid}-${Date.now()}`
      const job = yield* rpc.Jobs.Submit(
        JobSpec.make({
          ...remote(sshd, "(trap '' TERM; exec sleep 1006) & echo started; sleep 1007"),
          env: { VIBES_TEST_MARKER: marker }
        })
      )
      let seen = ""
      yield* rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(
        Stream.tap((o) => Effect.sync(() => (seen += o._tag === "JobLog" ? o.chunk : ""))),
        Stream.takeUntil(() => seen.includes("started")),
        Stream.runDrain
      )
      // "started" can come before the two sleeps have exec'd (only then does /proc show the
      // marker in their environment): wait for both, a bounded poll of /proc.
      const running = yield* processesWith(marker).pipe(
        Effect.repeat({
          until: (pids) => pids.length >= 2,
          schedule: Schedule.intersect(Schedule.spaced("20 millis"), Schedule.recurs(500))
        })
      )
      expect(running.length).toBeGreaterThanOrEqual(2)
      const canceled = yield* rpc.Jobs.Cancel({ jobId: job.id })
      expect(canceled.status).toBe("canceled")
      expect(yield* processesWith(marker)).toEqual([])
    })
  )

  it.scoped("an unknown host key is refused; an explicitly trusted one is accepted", () =>
    Effect.gen(function* () {
      const { sshd } = yield* Env
      const rpc = yield* client
      const unknown = Chunk.toReadonlyArray(
        yield* Stream.runCollect(
          rpc.Jobs.Execute(remote(sshd, "echo never", { knownHosts: sshd.emptyKnownHostsPath }))
        )
      )
      const done = unknown[unknown.length - 1]
      expect(done?._tag === "JobDone" && done.status).toBe("failed")
      expect(text(unknown, "stdout")).toBe("")
      expect(text(unknown, "system")).toContain("not in")
      const trusted = Chunk.toReadonlyArray(
        yield* Stream.runCollect(
          rpc.Jobs.Execute(
            remote(sshd, "echo trusted", {
              knownHosts: sshd.emptyKnownHostsPath,
              trustHostKey: sshd.hostKeyFingerprint
            })
          )
        )
      )
      expect(text(trusted, "stdout")).toBe("trusted\n")
    })
  )

  it.scoped(
    "the CLI over ssh: vibes run exits with the remote code; a detached tail -f is watched, canceled, listed and read back",
    () =>
      Effect.gen(function* () {
        const { server, sshd } = yield* Env
        const rpc = yield* client
        const env = Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token })
        const target = `${sshd.user}@${sshd.host}:${sshd.port}`
        const ssh = ["--ssh", target, "--identity", sshd.userKeyPath]

        const ran = yield* Vibes.run(["run", ...ssh, "--", "sh", "-c", "echo out; echo err >&2; exit 4"], env)
        expect(ran.stdout).toBe("out\n")
        expect(ran.stderr).toMatch(/^err$/m)
        expect(ran.code).toBe(4)

        const log = path.join(sshd.dir, "app.log")
        yield* Effect.sync(() => fs.writeFileSync(log, "line 1\nline 2\n"))
        const detached = yield* Vibes.run(
          ["run", ...ssh, "--detach", "--", "tail", "-n", "+1", "-f", log],
          env
        )
        expect(detached.code).toBe(0)
        const id = detached.stdout.trim()
        // Watch it: both lines, then one appended while it runs.
        const watched = yield* rpc.Jobs.Logs({ jobId: id, follow: true }).pipe(
          Stream.scan("", (stdout, o) =>
            o._tag === "JobLog" && o.stream === "stdout" ? stdout + o.chunk : stdout
          ),
          Stream.tap((stdout) =>
            stdout === "line 1\nline 2\n"
              ? Effect.sync(() => fs.appendFileSync(log, "line 3\n"))
              : Effect.void
          ),
          Stream.takeUntil((stdout) => stdout.includes("line 3\n")),
          Stream.runLast
        )
        expect(watched).toEqual(Option.some("line 1\nline 2\nline 3\n"))

        const canceled = yield* Vibes.run(["cancel", id], env)
        expect(canceled.stdout).toBe(`job ${id} canceled\n`)
        const listed = yield* Vibes.run(["jobs", "--status", "canceled"], env)
        expect(listed.stdout.split("\n").find((line) => line.startsWith(id))).toMatch(
          /^\S+\s+canceled\s+SIGTERM\s+ssh\s+.*tail -n \+1 -f /
        )
        const logs = yield* Vibes.run(["logs", id], env)
        expect(logs.stdout).toBe("line 1\nline 2\nline 3\n")
        expect(logs.stderr).toContain("[vibes] canceled")
        // Nothing of it is left on the remote side.
        expect(Processes.ofJob(id)).toEqual([])
      })
  )

  it.scoped("a missing key file is refused at submit", () =>
    Effect.gen(function* () {
      const { sshd } = yield* Env
      const rpc = yield* client
      const result = yield* Effect.either(
        rpc.Jobs.Submit(
          remote(sshd, "true", { credential: { _tag: "key-file", path: `${sshd.dir}/missing-key` } })
        )
      )
      expect(Either.isLeft(result) && result.left._tag).toBe("InvalidJobRequest")
    })
  )
})
