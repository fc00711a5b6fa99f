/**
 * What the sandbox of sessions and jobs costs at start-up (issue 18): the time from spawn to exit
 * of `/bin/true` started directly (the baseline, a raw `spawnSync`), through the root server's
 * user switch alone (`setpriv`), and through the namespace wrappers vibes uses — a root server's
 * (mount and PID namespaces, then `setpriv`) and an ordinary user's (user, mount and PID
 * namespaces). The root wrappers are measured only when the bench runs as root.
 *
 * Env: BENCH_STARTS (200 per variant).
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import * as Sandbox from "../../infra/sandbox/Sandbox.js"
import * as Harness from "../events/harness.js"

const starts = Harness.envInt("BENCH_STARTS", 200)

/** Milliseconds from spawn to exit of each of `starts` runs of `argv`. */
const measure = (argv: ReadonlyArray<string>) =>
  Effect.sync(() => {
    const [file, ...args] = argv
    const times: Array<number> = []
    for (let i = 0; i < starts; i++) {
      const started = Harness.now()
      const result = childProcess.spawnSync(file ?? "/bin/true", args, { stdio: "ignore" })
      times.push(Harness.now() - started)
      if (result.status !== 0) throw new Error(`${argv.join(" ")} exited ${String(result.status)}`)
    }
    return times
  })

const program = Effect.gen(function* () {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "vibes-bench-sandbox-"))
  const uid = process.getuid?.() ?? 0
  const gid = process.getgid?.() ?? 0
  const setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs", "--"]
  const variants: ReadonlyArray<readonly [string, ReadonlyArray<string>]> = [
    ["direct (baseline)", []],
    ...(uid === 0
      ? ([
          ["root: setpriv alone", setpriv],
          ["root: namespaces + setpriv (default)", Sandbox.rootNamespaceWrapper(dataDir, setpriv)]
        ] as const)
      : []),
    ["ordinary user: user namespaces (default)", Sandbox.namespaceWrapper(dataDir, uid, gid)]
  ]
  yield* Harness.print(
    `${starts} starts of /bin/true per variant, ${os.cpus().length} CPUs, ${os.cpus()[0]?.model ?? "?"}`
  )
  yield* Harness.print("")
  yield* Harness.print(Harness.header(["variant", "p50", "p99", "p50 vs direct"]))
  let baseline = 0
  for (const [name, prefix] of variants) {
    yield* Harness.progress(name)
    const times = yield* measure([...prefix, "/bin/true"])
    const p50 = Harness.median(times)
    if (baseline === 0) baseline = p50
    yield* Harness.print(
      Harness.row([
        name,
        Harness.millis(p50),
        Harness.millis(Harness.percentile(times, 99)),
        Harness.ratio(p50, baseline)
      ])
    )
  }
  fs.rmSync(dataDir, { recursive: true, force: true })
})

Effect.runSync(program)
