/**
 * Workspaces, against baselines in the same run, on a `vibes serve` (the build in dist/):
 *
 * - **worktree + session**: `Sessions.Create` with `--workspace --branch` (a new branch and its
 *   worktree, then the program started in it) on a repository of `BENCH_WS_FILES` files (default
 *   10,000), against `git worktree add -b` alone in the same repository, taken in turn,
 *   `BENCH_WS_RUNS` times each (default 20): p50 and p99;
 * - **diff**: `Git.Diff` of 1,000 changed files (one page of 1,000, patches included) against
 *   `git diff --numstat` plus `git diff` of the same worktree;
 * - **download**: `GET /api/files/download` of a `BENCH_WS_BYTES` file (default 1 GiB), against
 *   reading the file directly (`fs.createReadStream`), and the server's RSS while streaming it
 *   (sampled every 50 ms) against its RSS before.
 *
 * Env: BENCH_WS_FILES, BENCH_WS_RUNS, BENCH_WS_BYTES, BENCH_WS_SKIP (comma list of worktree, diff,
 * download), DATABASE_URL.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Fiber, Schedule } from "effect"
import type * as Client from "../../rpc/Client.js"
import { DiffRequest } from "../../rpc/Git.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { AddWorkspace } from "../../rpc/Workspaces.js"
import { giveToPrograms, programOwner } from "../../test/support/GitRepo.js"
import { tempDir } from "../../test/support/TempDir.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "../sessions/harness.js"

const files = Harness.envInt("BENCH_WS_FILES", 10_000)
const runs = Harness.envInt("BENCH_WS_RUNS", 20)
const bytes = Harness.envInt("BENCH_WS_BYTES", 1024 * 1024 * 1024)
const skip = new Set(Harness.envList("BENCH_WS_SKIP", []))

const fail = (what: string) => (cause: unknown) =>
  new Harness.BenchError({
    message: `${what}: ${cause instanceof Error ? cause.message : typeof cause === "object" && cause !== null && "message" in cause ? String(cause.message) : String(cause)}`
  })

/** git as the account the server's git runs as (the programs' account under root). */
const git = (cwd: string, ...args: ReadonlyArray<string>) =>
  Effect.async<string, Harness.BenchError>((resume) => {
    const owner = programOwner()
    childProcess.execFile(
      "git",
      ["-c", "safe.directory=*", "-C", cwd, ...args],
      {
        uid: owner.uid,
        gid: owner.gid,
        maxBuffer: 1024 * 1024 * 1024,
        env: {
          PATH: process.env["PATH"] ?? "/usr/bin:/bin",
          HOME: cwd,
          LC_ALL: "C",
          GIT_CONFIG_NOSYSTEM: "1"
        }
      },
      (error, stdout) =>
        resume(error === null ? Effect.succeed(stdout) : Effect.fail(fail(`git ${args[0] ?? ""}`)(error)))
    )
  })

/** A repository of `files` small files in 100 directories, one commit, owned by the programs. */
const makeRepository = (root: string) =>
  Effect.gen(function* () {
    const repo = path.join(root, "repo")
    for (let i = 0; i < files; i++) {
      const dir = path.join(repo, `d${String(i % 100).padStart(2, "0")}`)
      if (i < 100) fs.mkdirSync(dir, { recursive: true })
      fs.writeFileSync(path.join(dir, `f${i}.ts`), `export const value${i} = ${i}\n`)
    }
    giveToPrograms(root)
    yield* git(repo, "init", "-q", "-b", "main")
    yield* git(repo, "config", "user.name", "Bench")
    yield* git(repo, "config", "user.email", "bench@vibes.invalid")
    yield* git(repo, "add", "-A")
    yield* git(repo, "commit", "-q", "-m", "initial")
    return repo
  })

const worktrees = (client: Client.Client, repo: string, root: string) =>
  Effect.gen(function* () {
    const info = yield* Sessions.orBench(
      client.Workspaces.Add(AddWorkspace.make({ path: repo, name: "bench" }))
    )
    const baseDir = path.join(root, "baseline-worktrees")
    fs.mkdirSync(baseDir)
    giveToPrograms(baseDir)
    const baseline: Array<number> = []
    const vibes: Array<number> = []
    const sessions: Array<string> = []
    for (let run = 0; run < runs; run++) {
      yield* Harness.progress(`worktree + session, run ${run + 1} of ${runs}`)
      const [, gitMs] = yield* Harness.timed(
        git(repo, "worktree", "add", "-q", "-b", `base-${run}`, path.join(baseDir, `base-${run}`), "main")
      )
      baseline.push(gitMs)
      const [session, vibesMs] = yield* Harness.timed(
        Sessions.orBench(
          client.Sessions.Create(
            CreateSession.make({
              workspace: info.name,
              branch: `agent-${run}`,
              command: "sleep",
              args: ["600"]
            })
          )
        )
      )
      vibes.push(vibesMs)
      sessions.push(session.id)
    }
    for (const sessionId of sessions) yield* Sessions.orBench(client.Sessions.Close({ sessionId }))
    const p = (values: ReadonlyArray<number>, q: number) => Harness.percentile(values, q)
    const ratio50 = p(vibes, 50) / p(baseline, 50)
    const ratio99 = p(vibes, 99) / p(baseline, 99)
    return {
      info,
      text: [
        Harness.header([
          "create, repository of " + Harness.count(files) + " files",
          "p50 ms",
          "p99 ms",
          "vs git (p50)",
          "vs git (p99)",
          "target"
        ]),
        Harness.row([
          "git worktree add -b (baseline)",
          p(baseline, 50).toFixed(0),
          p(baseline, 99).toFixed(0),
          "",
          "",
          ""
        ]),
        Harness.row([
          "vibes: worktree + session started",
          p(vibes, 50).toFixed(0),
          p(vibes, 99).toFixed(0),
          `${ratio50.toFixed(2)}x`,
          `${ratio99.toFixed(2)}x`,
          `≤ 1.5x: ${ratio50 <= 1.5 && ratio99 <= 1.5 ? "met" : ratio50 <= 1.5 ? "met at p50, missed at p99" : "missed"}`
        ])
      ].join("\n")
    }
  })

/** `Git.Diff` of 1,000 changed files in one page, against git's own diff of the same worktree. */
const diff = (client: Client.Client, workspace: string, root: string) =>
  Effect.gen(function* () {
    const session = yield* Sessions.orBench(
      client.Sessions.Create(
        CreateSession.make({ workspace, branch: "diffed", command: "sleep", args: ["600"] })
      )
    )
    const worktree = path.join(root, "repo.worktrees", "diffed")
    for (let i = 0; i < 1000; i++) {
      fs.appendFileSync(
        path.join(worktree, `d${String(i % 100).padStart(2, "0")}`, `f${i}.ts`),
        `// changed ${i}\n`
      )
    }
    giveToPrograms(worktree)
    const baseline: Array<number> = []
    const vibes: Array<number> = []
    for (let run = 0; run < 5; run++) {
      yield* Harness.progress(`diff of 1,000 files, run ${run + 1} of 5`)
      const [, gitMs] = yield* Harness.timed(
        Effect.zip(
          git(worktree, "diff", "--numstat", "-z", "-M", "HEAD"),
          git(worktree, "diff", "-M", "HEAD")
        )
      )
      baseline.push(gitMs)
      const [page, vibesMs] = yield* Harness.timed(
        Sessions.orBench(client.Git.Diff(DiffRequest.make({ session: session.id, limit: 1000 })))
      )
      if (page.files.length !== 1000) {
        return yield* new Harness.BenchError({
          message: `the diff had ${page.files.length} files, not 1,000`
        })
      }
      vibes.push(vibesMs)
    }
    yield* Sessions.orBench(client.Sessions.Close({ sessionId: session.id }))
    return [
      Harness.header(["diff of 1,000 changed files (5 runs)", "median ms", "vs git"]),
      Harness.row(["git diff --numstat + git diff (baseline)", Harness.median(baseline).toFixed(0), ""]),
      Harness.row([
        "vibes Git.Diff, one page of 1,000 with patches",
        Harness.median(vibes).toFixed(0),
        `${(Harness.median(vibes) / Harness.median(baseline)).toFixed(2)}x`
      ])
    ].join("\n")
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

/** A file of `bytes` random-ish bytes (8 MiB blocks). */
const makeBig = (file: string) =>
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

/** Downloads of a big file over REST against reading it directly; the server's RSS meanwhile. */
const download = (server: Sessions.Server, workspace: string, repo: string) =>
  Effect.gen(function* () {
    const name = "big.bin"
    yield* Harness.progress(`writing a ${bytes} byte file`)
    yield* makeBig(path.join(repo, name))
    const direct = Effect.tryPromise({
      try: async () => {
        let received = 0
        for await (const chunk of fs.createReadStream(path.join(repo, name), { highWaterMark: 256 * 1024 })) {
          received += (chunk as Buffer).length
        }
        if (received !== bytes) throw new Error(`read ${received} of ${bytes} bytes`)
      },
      catch: fail("direct read")
    })
    const rest = Effect.tryPromise({
      try: async () => {
        const response = await fetch(`${server.url}/api/files/download?workspace=${workspace}&path=${name}`, {
          headers: { authorization: `Bearer ${server.token}` }
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
    yield* Effect.sleep("2 seconds")
    const idle = Sessions.rssKiB(server.pid)
    const directTimes: Array<number> = []
    const restTimes: Array<number> = []
    let peak = idle
    for (let run = 0; run < 2; run++) {
      yield* Harness.progress(`download, run ${run + 1} of 2`)
      const [, directMs] = yield* Harness.timed(direct)
      directTimes.push(directMs)
      const [[, restMs], restPeak] = yield* peakRss(server.pid, Harness.timed(rest))
      restTimes.push(restMs)
      peak = Math.max(peak, restPeak)
    }
    fs.rmSync(path.join(repo, name))
    const mibs = (ms: number) => bytes / 2 ** 20 / (ms / 1000)
    const ratio = mibs(Harness.median(restTimes)) / mibs(Harness.median(directTimes))
    const mib = (kib: number) => (kib / 1024).toFixed(0)
    return [
      Harness.header([
        `download of ${(bytes / 2 ** 30).toFixed(2)} GiB (2 runs, median)`,
        "ms",
        "MiB/s",
        "vs direct",
        "target"
      ]),
      Harness.row([
        "read the file directly (baseline)",
        Harness.median(directTimes).toFixed(0),
        mibs(Harness.median(directTimes)).toFixed(0),
        "",
        ""
      ]),
      Harness.row([
        "GET /api/files/download",
        Harness.median(restTimes).toFixed(0),
        mibs(Harness.median(restTimes)).toFixed(0),
        `${ratio.toFixed(2)}x`,
        `≥ 0.8x: ${ratio >= 0.8 ? "met" : "missed"}`
      ]),
      "",
      Harness.header(["server RSS", "MiB", "extra over idle", "target"]),
      Harness.row(["idle", mib(idle), "", ""]),
      Harness.row([
        "peak while streaming the file",
        mib(peak),
        mib(peak - idle),
        `≤ 64 MiB: ${peak - idle <= 64 * 1024 ? "met" : "missed"}`
      ])
    ].join("\n")
  })

const main = Effect.gen(function* () {
  const root = yield* tempDir("vibes-bench-ws-")
  yield* Harness.progress(`making a repository of ${files} files`)
  const repo = yield* makeRepository(root)
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const server = yield* Sessions.serve(db)
  const client = yield* Sessions.connect(server)
  const commit = childProcess
    .execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" })
    .trim()
  yield* Harness.print(`#### Workspaces, ${Harness.count(files)} files, ${runs} worktrees each\n`)
  yield* Harness.print(`${Harness.machineMarkdown(machine)}\n- Commit: ${commit}\n`)
  if (skip.has("worktree")) {
    const info = yield* Sessions.orBench(
      client.Workspaces.Add(AddWorkspace.make({ path: repo, name: "bench" }))
    )
    if (!skip.has("diff")) yield* Harness.print(`${yield* diff(client, info.name, root)}\n`)
    if (!skip.has("download")) yield* Harness.print(`${yield* download(server, info.name, repo)}\n`)
    return
  }
  const made = yield* worktrees(client, repo, root)
  yield* Harness.print(`${made.text}\n`)
  if (!skip.has("diff")) yield* Harness.print(`${yield* diff(client, made.info.name, root)}\n`)
  if (!skip.has("download")) yield* Harness.print(`${yield* download(server, made.info.name, repo)}\n`)
})

Harness.run(main)
