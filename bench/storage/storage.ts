/**
 * Storage throughput and memory, against baselines in the same run:
 *
 * - **local**: `LocalStorage.put` of a file (streamed, hashed, synced, renamed) and a streamed
 *   read back to a file, against `cp` of the same file;
 * - **S3** (s3rver on loopback, as in the tests): `S3Storage.put` and a streamed read to a file,
 *   against the raw AWS SDK (`@aws-sdk/lib-storage` `Upload` with the same part size and queue,
 *   and `GetObject` piped to a file);
 * - **server memory**: a `vibes serve` (the build in dist/) keeps a job's 1 GB artifact and
 *   streams it back over REST; its RSS is sampled every 50 ms against its RSS before;
 * - **listing**: 10,000 small objects listed 1,000 a page (local backend).
 *
 * Each transfer runs `BENCH_STORAGE_RUNS` times (default 2), the systems taken in turn.
 * Env: BENCH_STORAGE_BYTES (default 1 GiB), BENCH_STORAGE_RUNS, BENCH_STORAGE_SKIP (comma list of
 * local, s3, server, list), DATABASE_URL.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { pipeline } from "node:stream/promises"
import { GetObjectCommand } from "@aws-sdk/client-s3"
import { Upload } from "@aws-sdk/lib-storage"
import { Readable } from "node:stream"
import { Effect, Either, Fiber, Option, Schedule, type Scope, Stream } from "effect"
import * as NodeSink from "@effect/platform-node/NodeSink"
import * as NodeStream from "@effect/platform-node/NodeStream"
import { JobSpec } from "../../rpc/Jobs.js"
import * as LocalStorage from "../../infra/storage/LocalStorage.js"
import * as S3Storage from "../../infra/storage/S3Storage.js"
import * as Storage from "../../infra/storage/Storage.js"
import { tempDir } from "../../test/support/TempDir.js"
import * as TestS3 from "../../test/support/TestS3.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "../sessions/harness.js"

const bytes = Harness.envInt("BENCH_STORAGE_BYTES", 1024 * 1024 * 1024)
const runs = Harness.envInt("BENCH_STORAGE_RUNS", 2)
const skip = new Set(Harness.envList("BENCH_STORAGE_SKIP", []))

const fail = (what: string) => (cause: unknown) =>
  new Harness.BenchError({ message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}` })

const mibPerSecond = (ms: number) => bytes / 2 ** 20 / (ms / 1000)

/** A file of `bytes` random bytes (written in 8 MiB blocks). */
const makeSource = (file: string) =>
  Effect.sync(() => {
    const fd = fs.openSync(file, "w")
    const block = Buffer.alloc(8 * 1024 * 1024)
    for (let written = 0; written < bytes; written += block.length) {
      const size = Math.min(block.length, bytes - written)
      for (let i = 0; i < size; i += 65536) block.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i)
      fs.writeSync(fd, block, 0, size)
    }
    fs.closeSync(fd)
  })

const fileStream = (file: string) =>
  NodeStream.fromReadable<Harness.BenchError, Uint8Array>(
    () => fs.createReadStream(file, { highWaterMark: 256 * 1024 }),
    fail(`read ${file}`)
  )

const toFile = <E>(stream: Stream.Stream<Uint8Array, E>, file: string) =>
  Stream.run(
    stream,
    NodeSink.fromWritable(() => fs.createWriteStream(file), fail(`write ${file}`))
  )

/** `cp FROM TO`; with `durable`, then `sync TO` (fsync of the copy, as a put does). */
const cp = (from: string, to: string, durable = false) =>
  Effect.async<void, Harness.BenchError>((resume) => {
    const child = durable
      ? childProcess.spawn("sh", ["-c", 'cp "$1" "$2" && sync "$2"', "cp", from, to], { stdio: "ignore" })
      : childProcess.spawn("cp", [from, to], { stdio: "ignore" })
    child.once("exit", (code) =>
      resume(code === 0 ? Effect.void : Effect.fail(new Harness.BenchError({ message: `cp exited ${code}` })))
    )
  })

const key = (name: string) => Either.getOrThrow(Storage.key("bench", name))

/** Median milliseconds of each named transfer, run `runs` times in turn. */
const measure = (named: ReadonlyArray<readonly [string, Effect.Effect<unknown, unknown>]>) =>
  Effect.gen(function* () {
    const times = new Map<string, Array<number>>(named.map(([name]) => [name, []]))
    for (let run = 0; run < runs; run++) {
      for (const [name, transfer] of named) {
        yield* Harness.progress(`${name} (run ${run + 1} of ${runs})`)
        const [, ms] = yield* Harness.timed(Effect.mapError(transfer, fail(name)))
        times.get(name)?.push(ms)
      }
    }
    return new Map([...times].map(([name, list]) => [name, Harness.median(list)]))
  })

const table = (medians: Map<string, number>, pairs: ReadonlyArray<readonly [string, string]>) =>
  [
    Harness.header([
      "transfer",
      "baseline",
      "median ms",
      "MiB/s",
      "baseline MiB/s",
      "vs baseline (throughput)",
      "target"
    ]),
    ...pairs.map(([name, baseline]) => {
      const ms = medians.get(name) ?? Number.NaN
      const base = medians.get(baseline) ?? Number.NaN
      const ratio = base / ms
      return Harness.row([
        name,
        baseline,
        ms.toFixed(0),
        mibPerSecond(ms).toFixed(0),
        mibPerSecond(base).toFixed(0),
        `${ratio.toFixed(2)}x`,
        `≥ 0.8x: ${ratio >= 0.8 ? "met" : "missed"}`
      ])
    })
  ].join("\n")

const local = (dir: string, source: string) =>
  Effect.gen(function* () {
    const storage = yield* LocalStorage.make(path.join(dir, "local-store"))
    const stored = path.join(dir, "local-store", "objects", "bench", "big.bin")
    const medians = yield* measure([
      ["cp (upload baseline)", cp(source, path.join(dir, "cp-copy.bin"))],
      ["cp + fsync (durable upload baseline)", cp(source, path.join(dir, "cp-sync.bin"), true)],
      ["vibes local put", storage.put(key("big.bin"), fileStream(source))],
      ["cp of the stored file (download baseline)", cp(stored, path.join(dir, "cp-back.bin"))],
      ["vibes local get", toFile(Storage.stream(storage, key("big.bin")), path.join(dir, "local-back.bin"))]
    ])
    return table(medians, [
      ["vibes local put", "cp (upload baseline)"],
      ["vibes local put", "cp + fsync (durable upload baseline)"],
      ["vibes local get", "cp of the stored file (download baseline)"]
    ])
  })

const s3 = (dir: string, source: string) =>
  Effect.gen(function* () {
    const { settings } = yield* TestS3.start
    const storage = yield* S3Storage.make(settings)
    const client = S3Storage.client(settings)
    yield* Effect.addFinalizer(() => Effect.sync(() => client.destroy()))
    const rawPut = Effect.tryPromise(() =>
      new Upload({
        client,
        partSize: S3Storage.minPartSize,
        queueSize: 2,
        params: { Bucket: settings.bucket, Key: "bench/raw.bin", Body: fs.createReadStream(source) }
      }).done()
    )
    const rawGet = Effect.tryPromise(async () => {
      const response = await client.send(
        new GetObjectCommand({ Bucket: settings.bucket, Key: "bench/raw.bin" })
      )
      const body = response.Body
      if (!(body instanceof Readable)) throw new Error("no readable body")
      await pipeline(body, fs.createWriteStream(path.join(dir, "raw-back.bin")))
    })
    const medians = yield* measure([
      ["raw SDK Upload", rawPut],
      ["vibes S3 put", storage.put(key("big.bin"), fileStream(source))],
      ["raw SDK GetObject", rawGet],
      ["vibes S3 get", toFile(Storage.stream(storage, key("big.bin")), path.join(dir, "s3-back.bin"))]
    ])
    return table(medians, [
      ["vibes S3 put", "raw SDK Upload"],
      ["vibes S3 get", "raw SDK GetObject"]
    ])
  })

/** Peak RSS of `pid` (KiB) while `effect` runs, sampled every 50 ms. */
const peakRss = <A, E, R>(pid: number, effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    let peak = Sessions.rssKiB(pid)
    const sampler = yield* Effect.fork(
      Effect.repeat(
        Effect.sync(() => {
          peak = Math.max(peak, Sessions.rssKiB(pid))
        }),
        { schedule: Schedule.spaced("50 millis") }
      )
    )
    const result = yield* effect
    yield* Fiber.interrupt(sampler)
    return [result, peak] as const
  })

const server = (dir: string) =>
  Effect.gen(function* () {
    const db = yield* Harness.database
    const running = yield* Sessions.serve(db)
    const client = yield* Sessions.connect(running)
    const work = path.join(dir, "job")
    fs.mkdirSync(work, { mode: 0o777 })
    fs.chmodSync(work, 0o777)
    // Settled: what the server holds with nothing to do.
    yield* Effect.sleep("2 seconds")
    const idle = Sessions.rssKiB(running.pid)
    const [jobId, keepPeak] = yield* peakRss(
      running.pid,
      Effect.gen(function* () {
        const outputs = yield* Sessions.orBench(
          Stream.runCollect(
            client.Jobs.Execute(
              JobSpec.make({
                command: `head -c ${bytes} /dev/urandom > big.bin`,
                shell: true,
                cwd: work,
                artifacts: ["big.bin"]
              })
            )
          )
        )
        const first = [...outputs][0]
        return first?._tag === "JobAccepted" ? first.job.id : ""
      })
    )
    const [, downloadPeak] = yield* peakRss(
      running.pid,
      Effect.tryPromise({
        try: async () => {
          const response = await fetch(`${running.url}/api/jobs/${jobId}/artifact?name=big.bin`, {
            headers: { authorization: `Bearer ${running.token}` }
          })
          if (response.body === null || response.status !== 200) throw new Error(`status ${response.status}`)
          let received = 0
          const reader = response.body.getReader()
          for (;;) {
            const { done, value } = await reader.read()
            if (done) break
            received += value.length
          }
          if (received !== bytes) throw new Error(`received ${received} of ${bytes} bytes`)
        },
        catch: fail("REST download")
      })
    )
    const mib = (kib: number) => (kib / 1024).toFixed(0)
    return [
      Harness.header(["server RSS", "MiB", "extra over idle", "target"]),
      Harness.row(["idle", mib(idle), "", ""]),
      Harness.row([
        "peak while keeping a 1 GB artifact",
        mib(keepPeak),
        mib(keepPeak - idle),
        `≤ 64 MiB: ${keepPeak - idle <= 64 * 1024 ? "met" : "missed"}`
      ]),
      Harness.row([
        "peak while streaming it back over REST",
        mib(downloadPeak),
        mib(downloadPeak - idle),
        `≤ 64 MiB: ${downloadPeak - idle <= 64 * 1024 ? "met" : "missed"}`
      ])
    ].join("\n")
  })

const listing = (dir: string) =>
  Effect.gen(function* () {
    const storage = yield* LocalStorage.make(path.join(dir, "list-store"))
    const count = 10_000
    yield* Effect.forEach(
      Array.from({ length: count }, (_, i) => i),
      (i) =>
        storage.put(key(`many/${String(i).padStart(5, "0")}.txt`), Stream.make(new Uint8Array([i % 256]))),
      { concurrency: 16 }
    )
    const prefix = Either.getOrThrow(Storage.prefix("bench", "many/"))
    const pages: Array<number> = []
    let after: string | undefined = undefined
    let seen = 0
    for (;;) {
      const [page, ms]: [Storage.Page, number] = yield* Harness.timed(
        storage.list(prefix, { after, limit: 1000 })
      )
      pages.push(ms)
      seen += page.objects.length
      if (Option.isNone(page.next)) break
      after = page.next.value
    }
    if (seen !== count) return yield* new Harness.BenchError({ message: `listed ${seen} of ${count}` })
    const worst = Math.max(...pages)
    return [
      Harness.header(["listing 10,000 objects, 1,000 a page (local)", "median ms", "worst ms", "target"]),
      Harness.row([
        `${pages.length} pages`,
        Harness.median(pages).toFixed(1),
        worst.toFixed(1),
        `≤ 200 ms a page: ${worst <= 200 ? "met" : "missed"}`
      ])
    ].join("\n")
  })

const main = Effect.gen(function* () {
  const dir = yield* tempDir("vibes-bench-storage-")
  const source = path.join(dir, "source.bin")
  yield* Harness.progress(`writing a ${bytes} byte source file`)
  yield* makeSource(source)
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const commit = childProcess
    .execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" })
    .trim()
  yield* Harness.print(`#### Storage, ${(bytes / 2 ** 30).toFixed(2)} GiB, ${runs} runs each (median)\n`)
  yield* Harness.print(`${Harness.machineMarkdown(machine)}\n- Commit: ${commit}\n`)
  const sections: Array<[string, Effect.Effect<string, unknown, Scope.Scope>]> = [
    ["local", local(dir, source)],
    ["s3", s3(dir, source)],
    ["server", server(dir)],
    ["list", listing(dir)]
  ]
  for (const [name, section] of sections) {
    if (skip.has(name)) continue
    const text = yield* Effect.scoped(section).pipe(Effect.mapError(fail(name)))
    yield* Harness.print(`${text}\n`)
    // What a section wrote goes before the next: 1 GB files add up on the disk.
    yield* Effect.sync(() => {
      for (const entry of fs.readdirSync(dir))
        if (entry !== "source.bin") fs.rmSync(path.join(dir, entry), { recursive: true, force: true })
    })
  }
})

Harness.run(main)
