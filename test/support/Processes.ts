/**
 * The processes a test starts: found by a variable in their environment, or held for a scope.
 */
import type { ChildProcess } from "node:child_process"
import { type Duration, Effect } from "effect"
import { Option } from "effect"
import * as Proc from "../../infra/proc/Proc.js"

/** Pids of live (not zombie) processes whose environment holds `NAME=value` exactly. */
export const withEnv = (name: string, value: string): Array<number> =>
  Proc.pids().filter(
    (pid) => Option.exists(Proc.stat(pid), (stat) => stat.state !== "Z") && Proc.hasEnv(pid, name, value)
  )

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
