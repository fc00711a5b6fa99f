/**
 * What a PTY host leaves behind for the next server on its data dir.
 *
 * A host keeps a PTY whose program has ended until a server releases it, so that the server learns
 * how it ended. A host that goes away first (idle with no server left, stopped, or its server gone
 * for good) writes each such PTY's exit, byte count and last output into a file of its own in the
 * data dir, `pty-exits-<millis>-<pid>-<random>.json` (0600). A session whose PTY a host no longer knows
 * takes its record from there, and ends as `exited` rather than `lost`.
 *
 * A host writes its file once, whole (through a rename), and never touches it again; only the
 * server, one per data dir, rewrites or removes files after that. So writers never race.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { Context, Effect, Either, Layer, Option, Schema } from "effect"
import { PtyExit, PtyId } from "./PtyHost.js"

/** A records file could not be read, written or removed. */
export class PtyExitRecordsError extends Schema.TaggedError<PtyExitRecordsError>()("PtyExitRecordsError", {
  message: Schema.String
}) {}

/** How a PTY that no server released had ended, as its host recorded it when it exited. */
export class PtyExitRecord extends Schema.Class<PtyExitRecord>("PtyExitRecord")({
  id: PtyId,
  exit: PtyExit,
  exitedAt: Schema.DateTimeUtc,
  /** Total bytes the program wrote. */
  seq: Schema.NonNegativeInt,
  /** The last bytes it wrote (at most `maxTailBytes`): they end at byte `seq`. */
  tail: Schema.Uint8ArrayFromBase64
}) {}

/** Most output bytes a record keeps of its PTY. */
export const maxTailBytes = 256 * 1024

/** Start of the name of every records file in the data dir. */
export const filePrefix = "pty-exits-"

const RecordsFile = Schema.parseJson(
  Schema.Struct({ pid: Schema.Int, records: Schema.Array(PtyExitRecord) }),
  { space: 1 }
)
const decodeFile = Schema.decodeUnknownEither(RecordsFile)
const encodeFile = Schema.encodeEither(RecordsFile)

const isRecordsFile = (name: string) => name.startsWith(filePrefix) && name.endsWith(".json")

const failed = (what: string) => (cause: unknown) =>
  new PtyExitRecordsError({
    message: `cannot ${what}: ${cause instanceof Error ? cause.message : String(cause)}`
  })

/** Writes `content` to `file` (0600) through a temporary file and a rename, flushed to disk first. */
const replaceFile = (file: string, content: string) =>
  Effect.try({
    try: () => {
      const temporary = path.join(path.dirname(file), `.${path.basename(file)}.tmp`)
      try {
        fs.rmSync(temporary, { force: true })
        const fd = fs.openSync(temporary, "wx", 0o600)
        try {
          fs.writeFileSync(fd, content)
          fs.fsyncSync(fd)
        } finally {
          fs.closeSync(fd)
        }
        fs.renameSync(temporary, file)
      } catch (error) {
        fs.rmSync(temporary, { force: true })
        throw error
      }
    },
    catch: failed(`write ${file}`)
  })

const encode = (file: string, pid: number, records: ReadonlyArray<PtyExitRecord>) =>
  Either.match(encodeFile({ pid, records }), {
    onLeft: (error) => Effect.fail(failed(`encode ${file}`)(error)),
    onRight: Effect.succeed
  })

/**
 * Writes `records` into a new file of their own in `dataDir`, for the next server; returns its
 * path (none when there is nothing to write).
 */
export const write = (
  dataDir: string,
  records: ReadonlyArray<PtyExitRecord>
): Effect.Effect<Option.Option<string>, PtyExitRecordsError> =>
  Effect.gen(function* () {
    if (records.length === 0) return Option.none()
    const unique = crypto.randomBytes(4).toString("hex")
    const file = path.join(dataDir, `${filePrefix}${Date.now()}-${process.pid}-${unique}.json`)
    yield* replaceFile(file, yield* encode(file, process.pid, records))
    return Option.some(file)
  })

/** One records file: its records, or none when it cannot be decoded. */
export interface RecordsFileContent {
  readonly file: string
  readonly pid: number
  readonly records: Option.Option<ReadonlyArray<PtyExitRecord>>
}

/** Every records file in `dataDir`, oldest name first; none when the directory is gone. */
export const readAll = (
  dataDir: string
): Effect.Effect<ReadonlyArray<RecordsFileContent>, PtyExitRecordsError> =>
  Effect.try({
    try: () => {
      let names: Array<string>
      try {
        names = fs.readdirSync(dataDir)
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return []
        throw error
      }
      return names
        .filter(isRecordsFile)
        .sort()
        .flatMap((name): Array<RecordsFileContent> => {
          const file = path.join(dataDir, name)
          let text: string
          try {
            text = fs.readFileSync(file, "utf8")
          } catch (error) {
            // Taken by someone else meanwhile.
            if ((error as NodeJS.ErrnoException).code === "ENOENT") return []
            throw error
          }
          return Either.match(decodeFile(text), {
            onLeft: () => [{ file, pid: 0, records: Option.none() }],
            onRight: (content) => [{ file, pid: content.pid, records: Option.some(content.records) }]
          })
        })
    },
    catch: failed(`read the PTY exit records in ${dataDir}`)
  })

/** The records left by PTY hosts that exited, as the server uses them. */
export class PtyExitRecords extends Context.Tag("vibes/PtyExitRecords")<
  PtyExitRecords,
  {
    /** The record of PTY `id`, removed from its file; none when no host left one. */
    readonly take: (id: string) => Effect.Effect<Option.Option<PtyExitRecord>, PtyExitRecordsError>
    /**
     * Removes every record whose PTY is not in `keep` (its session ended some other way), and
     * every file that cannot be decoded; returns how many records went.
     */
    readonly retain: (keep: ReadonlySet<string>) => Effect.Effect<number, PtyExitRecordsError>
  }
>() {}

/** Options of the records layer. */
export interface Options {
  /** The data dir the PTY host writes its records into. */
  readonly dataDir: string
}

/** Builds the service on `dataDir`; its changes to files are serialized. */
export const make = (options: Options): Effect.Effect<PtyExitRecords["Type"]> =>
  Effect.gen(function* () {
    const lock = yield* Effect.makeSemaphore(1)

    const rewrite = (content: RecordsFileContent, records: ReadonlyArray<PtyExitRecord>) =>
      records.length === 0
        ? Effect.try({
            try: () => fs.rmSync(content.file, { force: true }),
            catch: failed(`remove ${content.file}`)
          })
        : Effect.flatMap(encode(content.file, content.pid, records), (text) =>
            replaceFile(content.file, text)
          )

    const take = (id: string) =>
      lock.withPermits(1)(
        Effect.gen(function* () {
          let found = Option.none<PtyExitRecord>()
          for (const content of yield* readAll(options.dataDir)) {
            if (Option.isNone(content.records)) continue
            const [mine, others] = partition(content.records.value, (record) => record.id === id)
            if (mine.length === 0) continue
            const last = mine[mine.length - 1]
            if (last !== undefined) found = Option.some(last)
            yield* rewrite(content, others)
          }
          return found
        })
      )

    const retain = (keep: ReadonlySet<string>) =>
      lock.withPermits(1)(
        Effect.gen(function* () {
          let dropped = 0
          for (const content of yield* readAll(options.dataDir)) {
            if (Option.isNone(content.records)) {
              yield* Effect.logWarning(`removing ${content.file}: it is not a PTY exit records file`)
              yield* rewrite(content, [])
              continue
            }
            const [kept, stale] = partition(content.records.value, (record) => keep.has(record.id))
            if (stale.length === 0) continue
            dropped += stale.length
            yield* rewrite(content, kept)
          }
          return dropped
        })
      )

    return PtyExitRecords.of({ take, retain })
  })

/** The service on the data dir's records. */
export const layer = (options: Options): Layer.Layer<PtyExitRecords> =>
  Layer.effect(PtyExitRecords, make(options))

const partition = <A>(
  items: ReadonlyArray<A>,
  predicate: (item: A) => boolean
): [ReadonlyArray<A>, ReadonlyArray<A>] => [items.filter(predicate), items.filter((item) => !predicate(item))]
