/**
 * Finding the processes a test started, by a variable in their environment.
 */
import * as fs from "node:fs"

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
