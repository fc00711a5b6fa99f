/**
 * The processes a test starts: found by a variable in their environment, or held for a scope.
 */
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import { type Duration, Effect } from "effect"

/** Pids of live (not zombie) processes whose environment holds `NAME=value` exactly. */
export const withEnv = (name: string, value: string): Array<number> => {
  const needle = `${name}=${value}\u0000`
  const pids: Array<number> = []
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8")
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) continue
      if (fs.readFileSync(`/proc/${entry}/environ`, "utf8").includes(needle)) pids.push(Number(entry))
    } catch {
      // Gone meanwhile, or not ours to read.
    }
  }
  return pids
}

/** Pids of the live processes of a job (each carries `VIBES_JOB_ID`). */
export const ofJob = (jobId: string): Array<number> => withEnv("VIBES_JOB_ID", jobId)

/**
 * A child process for the life of the scope: when the scope closes it gets SIGTERM, and SIGKILL
 * if it is still running `grace` later.
 */
export const scopedChild = <C extends ChildProcess>(spawn: () => C, grace: Duration.DurationInput) =>
  Effect.acquireRelease(Effect.sync(spawn), (child) =>
    Effect.async<void>((resume) => {
      if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
      child.once("exit", () => resume(Effect.void))
      child.kill("SIGTERM")
    }).pipe(
      Effect.timeout(grace),
      Effect.ignore,
      Effect.ensuring(
        Effect.sync(() => {
          if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
        })
      )
    )
  )
