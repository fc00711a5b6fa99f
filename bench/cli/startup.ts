/**
 * How long the `vibes` CLI takes as a whole process (issue 19: `vibes --version` ≤ 150 ms and
 * `vibes ls` against a running local server ≤ 250 ms, median of 10), against `node -e 0` (Node's
 * own start, the floor) in the same run. Also the unbundled CLI (`node dist/src/main.js`, what
 * bin/vibes.js ran before the bundle), as the reference for what the bundle saves, and the memory
 * of the server and its PTY host with no session.
 *
 * Needs a build (`npm run build`). Env: BENCH_RUNS (10 per command).
 */
import * as childProcess from "node:child_process"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import * as Harness from "../events/harness.js"
import * as Sessions from "../sessions/harness.js"

const runs = Harness.envInt("BENCH_RUNS", 10)
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

/** Milliseconds from spawn to exit of each of `runs` runs of `node <args>`. */
const measure = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv) =>
  Effect.sync(() => {
    const times: Array<number> = []
    for (let i = 0; i < runs; i++) {
      const started = Harness.now()
      const result = childProcess.spawnSync(process.execPath, [...args], { cwd: root, env, stdio: "pipe" })
      times.push(Harness.now() - started)
      if (result.status !== 0) {
        throw new Error(`node ${args.join(" ")} exited ${String(result.status)}: ${result.stderr.toString()}`)
      }
    }
    return times
  })

const program = Effect.gen(function* () {
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const server = yield* Sessions.serve(db)
  const env: NodeJS.ProcessEnv = { ...process.env, VIBES_URL: server.url, VIBES_TOKEN: server.token }
  delete env["VIBES_DATA_DIR"]
  const bundled = path.join("bin", "vibes.js")
  const unbundled = path.join("dist", "src", "main.js")
  const commands: ReadonlyArray<readonly [string, ReadonlyArray<string>, number | undefined]> = [
    ["node -e 0 (floor)", ["-e", "0"], undefined],
    ["vibes --version", [bundled, "--version"], 150],
    ["vibes --help", [bundled, "--help"], undefined],
    ["vibes ls", [bundled, "ls"], 250],
    ["vibes status", [bundled, "status"], undefined],
    ["unbundled: --version", [unbundled, "--version"], undefined],
    ["unbundled: ls", [unbundled, "ls"], undefined]
  ]
  yield* Harness.print(`## CLI start-up, whole processes (${runs} runs each)\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(Sessions.runLines())
  yield* Harness.print("")
  yield* Harness.print(Harness.header(["command", "median", "p90", "vs node -e 0", "target"]))
  let floor = 0
  for (const [name, args, target] of commands) {
    yield* Harness.progress(name)
    const times = yield* measure(args, env)
    const p50 = Harness.median(times)
    if (floor === 0) floor = p50
    yield* Harness.print(
      Harness.row([
        name,
        Harness.millis(p50),
        Harness.millis(Harness.percentile(times, 90)),
        Harness.ratio(p50, floor),
        target === undefined ? "" : `≤ ${target} ms: ${p50 <= target ? "met" : "missed"}`
      ])
    )
  }
  const serveKiB = Sessions.rssKiB(server.pid)
  const hostKiB = Sessions.rssKiB(server.ptyHostPid())
  yield* Harness.print(
    `\nRSS with no session: serve ${(serveKiB / 1024).toFixed(0)} MiB, PTY host ${(hostKiB / 1024).toFixed(0)} MiB`
  )
})

Effect.runPromise(Effect.scoped(program)).catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
