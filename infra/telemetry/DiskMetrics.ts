/** Gauges of the filesystem that holds the data directory: its size and what is left of it. */
import * as fs from "node:fs"
import { Effect, Metric } from "effect"

const sizeBytes = Metric.gauge("vibes_data_dir_filesystem_size_bytes", {
  description: "Size of the filesystem holding the data directory"
})
const availableBytes = Metric.gauge("vibes_data_dir_filesystem_available_bytes", {
  description: "Bytes of that filesystem an unprivileged process may still write"
})

/** Sets the disk gauges of `dataDir` (before a scrape). */
export const sample = (dataDir: string): Effect.Effect<void, Error> =>
  Effect.tryPromise({
    try: () => fs.promises.statfs(dataDir),
    catch: (cause) => new Error(`cannot stat the filesystem of ${dataDir}: ${String(cause)}`)
  }).pipe(
    Effect.flatMap((stats) =>
      Effect.zipRight(
        Metric.set(sizeBytes, stats.blocks * stats.bsize),
        Metric.set(availableBytes, stats.bavail * stats.bsize)
      )
    )
  )
