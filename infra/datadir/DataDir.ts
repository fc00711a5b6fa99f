/**
 * The node's data directory: created private (0700), locked by one `vibes serve` at a time.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, Schema, type Scope } from "effect"

/** Another live `vibes serve` holds the data directory. */
export class DataDirLocked extends Schema.TaggedError<DataDirLocked>()("DataDirLocked", {
  dataDir: Schema.String,
  pid: Schema.Int,
  message: Schema.String
}) {}

/** The data directory cannot be created or written. */
export class DataDirError extends Schema.TaggedError<DataDirError>()("DataDirError", {
  dataDir: Schema.String,
  message: Schema.String
}) {}

/** Name of the lock file inside the data directory. */
export const lockFileName = "vibes.lock"

/** Creates `dir` (and parents) with mode 0700 when missing. */
export const ensure = (dir: string): Effect.Effect<void, DataDirError> =>
  Effect.try({
    try: () => {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    },
    catch: (cause) =>
      new DataDirError({ dataDir: dir, message: `cannot create data directory ${dir}: ${String(cause)}` })
  })

/** True when a process with this pid exists (and is not a zombie we could see). */
export const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const readLockPid = (file: string): number | undefined => {
  try {
    const parsed: unknown = JSON.parse(fs.readFileSync(file, "utf8"))
    if (typeof parsed === "object" && parsed !== null && "pid" in parsed && typeof parsed.pid === "number") {
      return parsed.pid
    }
    return undefined
  } catch {
    return undefined
  }
}

const tryCreate = (file: string): boolean => {
  try {
    fs.writeFileSync(file, JSON.stringify({ pid: process.pid, startedAt: new Date().toISOString() }), {
      flag: "wx",
      mode: 0o600
    })
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false
    throw error
  }
}

/**
 * Holds the data directory for the lifetime of the scope. A lock left by a process that is gone
 * is taken over; a live holder makes this fail with `DataDirLocked`.
 */
export const lock = (dataDir: string): Effect.Effect<void, DataDirLocked | DataDirError, Scope.Scope> => {
  const file = path.join(dataDir, lockFileName)
  const create = Effect.try({
    try: () => tryCreate(file),
    catch: (cause) => new DataDirError({ dataDir, message: `cannot write ${file}: ${String(cause)}` })
  })
  const acquire = Effect.gen(function* () {
    yield* ensure(dataDir)
    for (let attempt = 0; attempt < 3; attempt++) {
      if (yield* create) return
      const holder = readLockPid(file)
      if (holder !== undefined && holder !== process.pid && isAlive(holder)) {
        return yield* new DataDirLocked({
          dataDir,
          pid: holder,
          message: `another vibes serve (pid ${holder}) is using ${dataDir}; stop it, or give this one its own VIBES_DATA_DIR`
        })
      }
      fs.rmSync(file, { force: true })
    }
    return yield* new DataDirError({ dataDir, message: `cannot take the lock ${file}` })
  })
  const release = Effect.sync(() => {
    if (readLockPid(file) === process.pid) fs.rmSync(file, { force: true })
  })
  return Effect.acquireRelease(acquire, () => release)
}
