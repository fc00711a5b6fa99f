import { expect, layer } from "@effect/vitest"
import { Chunk, Context, Effect, Either, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { JobSpec, SshTarget, type ExecuteOutput, type JobOutput } from "../../rpc/Jobs.js"
import { clientLayer } from "../support/Attach.js"
import * as Processes from "../support/Processes.js"
import * as Sshd from "../support/Sshd.js"
import * as TestServer from "../support/TestServer.js"

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
      expect((yield* processesWith(marker)).length).toBeGreaterThanOrEqual(1)
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
