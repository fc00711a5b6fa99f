import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Chunk, Context, Duration, Effect, Layer, Schedule, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { JobSpec } from "../../rpc/Jobs.js"
import { clientLayer } from "../support/Attach.js"
import * as HttpClient from "../support/HttpClient.js"
import * as TestServer from "../support/TestServer.js"
import { writableTempDir } from "../support/TempDir.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.startWith({ jobKillGrace: Duration.seconds(1) }))

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")

/** Runs a shell line in `cwd` keeping `artifacts`, to its end; its id and the output's text. */
const runJob = (
  rpc: Client.Client,
  cwd: string,
  script: string,
  artifacts: ReadonlyArray<string>,
  extra: Partial<ConstructorParameters<typeof JobSpec>[0]> = {}
) =>
  Effect.gen(function* () {
    const outputs = yield* rpc.Jobs.Execute(
      JobSpec.make({ command: script, shell: true, cwd, artifacts, ...extra })
    ).pipe(Stream.runCollect)
    const all = Chunk.toReadonlyArray(outputs)
    const accepted = all[0]
    if (accepted?._tag !== "JobAccepted") throw new Error("the job was not accepted")
    const system = all
      .flatMap((o) => (o._tag === "JobLog" && o.stream === "system" ? [o.chunk] : []))
      .join("")
    return { jobId: accepted.job.id, system }
  })

const download = (rpc: Client.Client, jobId: string, name: string, offset = 0) =>
  rpc.Artifacts.Download({ jobId, name, offset }).pipe(
    Stream.runCollect,
    Effect.map((chunks) => Buffer.concat(Chunk.toReadonlyArray(chunks)))
  )

const builds = [
  "mkdir -p dist/sub",
  "head -c 5242881 /dev/urandom > dist/big.bin",
  "printf x > dist/sub/one",
  ": > dist/empty",
  "echo '<ok/>' > report.xml",
  "echo skipped > notes.txt",
  "ln -s /etc/hostname dist/escape",
  "ln -s /etc dist/etc"
].join(" && ")

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("job artifacts", (it) => {
  it.scoped(
    "a job keeps the files its globs match, with size and sha256, and each downloads byte for byte",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const cwd = yield* writableTempDir("vibes-artifacts-")
        const { jobId, system } = yield* runJob(rpc, cwd, builds, ["dist/**", "report.xml"])
        const listed = yield* rpc.Artifacts.List({ jobId })
        expect(listed.map((artifact) => artifact.name)).toEqual([
          "dist/big.bin",
          "dist/empty",
          "dist/sub/one",
          "report.xml"
        ])
        for (const artifact of listed) {
          const original = fs.readFileSync(path.join(cwd, artifact.name))
          expect(artifact.size).toBe(original.length)
          expect(artifact.sha256).toBe(sha256(original))
          const bytes = yield* download(rpc, jobId, artifact.name)
          expect(bytes.equals(original)).toBe(true)
        }
        const tail = yield* download(rpc, jobId, "dist/big.bin", 5242880)
        expect(tail.equals(fs.readFileSync(path.join(cwd, "dist/big.bin")).subarray(5242880))).toBe(true)
        // Symlinks (out of the directory, file or folder) are neither followed nor kept.
        expect(system).not.toContain("dist/escape")
        expect(system).toContain("kept artifact report.xml (6 bytes, sha256 ")
        expect(listed.some((artifact) => artifact.name.startsWith("dist/etc"))).toBe(false)
        const events = yield* rpc.Events.Read({
          from: 1,
          filter: EventFilter.make({ types: ["job.artifact"], jobId }),
          limit: 100
        })
        expect(events.map((event) => event.data)).toEqual(
          listed.map((artifact) => ({
            jobId,
            name: artifact.name,
            size: artifact.size,
            sha256: artifact.sha256
          }))
        )
      })
  )

  it.scoped("artifacts are kept when the job fails, unless it asked for them on success only", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const cwd = yield* writableTempDir("vibes-artifacts-")
      const failed = yield* runJob(rpc, cwd, "echo log > build.log; exit 3", ["*.log"])
      expect((yield* rpc.Artifacts.List({ jobId: failed.jobId })).map((a) => a.name)).toEqual(["build.log"])
      const onlySuccess = yield* runJob(rpc, cwd, "echo log > build.log; exit 3", ["*.log"], {
        artifactsWhen: "success"
      })
      expect(yield* rpc.Artifacts.List({ jobId: onlySuccess.jobId })).toEqual([])
      const nothing = yield* runJob(rpc, cwd, "true", ["missing/**"])
      expect(nothing.system).toContain(`no file matched the artifact globs "missing/**"`)
    })
  )

  it.scoped("unknown jobs and artifacts, and globs that climb out, are refused with typed errors", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const unknown = "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293"
      expect((yield* Effect.flip(rpc.Artifacts.List({ jobId: unknown })))._tag).toBe("JobNotFound")
      const cwd = yield* writableTempDir("vibes-artifacts-")
      const { jobId } = yield* runJob(rpc, cwd, "echo a > a.txt", ["a.txt"])
      const missing = yield* Effect.flip(rpc.Artifacts.Get({ jobId, name: "b.txt" }))
      expect(missing._tag).toBe("ArtifactNotFound")
      const past = yield* Effect.flip(download(rpc, jobId, "a.txt", 100))
      expect(past._tag).toBe("InvalidArtifactRequest")
      for (const glob of ["../*", "/etc/*", "a/../../b"]) {
        const refused = yield* Effect.flip(
          rpc.Jobs.Submit(JobSpec.make({ command: "true", cwd, artifacts: [glob] }))
        )
        expect(refused._tag).toBe("InvalidJobRequest")
      }
    })
  )

  it.scoped("REST lists and streams artifacts, with ranges, and asks for credentials first", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const rpc = yield* client
      const cwd = yield* writableTempDir("vibes-artifacts-")
      const { jobId } = yield* runJob(rpc, cwd, "printf 0123456789 > digits.txt", ["digits.txt"])
      const auth = { authorization: `Bearer ${server.token}` }
      const listed = yield* HttpClient.request(`${server.url}/api/jobs/${jobId}/artifacts`, { headers: auth })
      expect(listed.status).toBe(200)
      expect(JSON.parse(listed.body)).toMatchObject([
        { jobId, name: "digits.txt", size: 10, sha256: sha256(Buffer.from("0123456789")) }
      ])
      const url = `${server.url}/api/jobs/${jobId}/artifact?name=digits.txt`
      const whole = yield* HttpClient.request(url, { headers: auth })
      expect([whole.status, whole.body, whole.headers["content-length"]]).toEqual([200, "0123456789", "10"])
      expect(whole.headers["x-content-sha256"]).toBe(sha256(Buffer.from("0123456789")))
      const part = yield* HttpClient.request(url, { headers: { ...auth, range: "bytes=2-4" } })
      expect([part.status, part.body, part.headers["content-range"]]).toEqual([206, "234", "bytes 2-4/10"])
      const suffix = yield* HttpClient.request(url, { headers: { ...auth, range: "bytes=-3" } })
      expect([suffix.status, suffix.body]).toEqual([206, "789"])
      const beyond = yield* HttpClient.request(url, { headers: { ...auth, range: "bytes=10-" } })
      expect([beyond.status, beyond.headers["content-range"]]).toEqual([416, "bytes */10"])
      expect((yield* HttpClient.request(url)).status).toBe(401)
      expect((yield* HttpClient.request(`${url}x`, { headers: auth })).status).toBe(404)
      expect(
        (yield* HttpClient.request(`${server.url}/api/jobs/${jobId}/artifact?name=`, { headers: auth }))
          .status
      ).toBe(400)
      expect(
        (yield* HttpClient.request(`${server.url}/api/jobs/not-a-job/artifacts`, { headers: auth })).status
      ).toBe(400)
    })
  )
})

layer(
  Layer.scoped(
    Node,
    TestServer.startWith({ jobRetention: Duration.seconds(1), eventsRetentionInterval: Duration.millis(200) })
  ),
  { timeout: 60_000, excludeTestServices: true }
)("artifact retention", (it) => {
  it.scoped("a pruned job's stored artifacts are deleted with it", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const rpc = yield* client
      const cwd = yield* writableTempDir("vibes-artifacts-")
      const { jobId, system } = yield* runJob(rpc, cwd, "echo a > a.txt", ["a.txt"])
      expect(system).toContain("kept artifact a.txt")
      const stored = path.join(server.dataDir, "storage", "objects", "default", "jobs", jobId)
      yield* Effect.flip(rpc.Jobs.Get({ jobId })).pipe(
        Effect.retry({ while: () => true, schedule: Schedule.spaced("100 millis") }),
        Effect.timeout("20 seconds")
      )
      expect(fs.existsSync(stored)).toBe(false)
    })
  )
})
