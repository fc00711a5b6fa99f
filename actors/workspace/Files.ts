/**
 * The file service: every path a client names is confined to its target's root (a workspace's
 * checkout or worktree, a session's or job's worktree or directory) by `Confined`; what vibes
 * creates there belongs to the account programs run as.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { Context, DateTime, Effect, Layer, type Scope, Stream } from "effect"
import {
  DirectoryPage,
  FileChunk,
  FileEntry,
  FileExists,
  FileNotFound,
  FilesUnavailable,
  FileTooLarge,
  type FileType,
  InvalidFileRequest,
  PathRefused
} from "../../rpc/Files.js"
import * as Confined from "../../infra/files/Confined.js"
import { GitService, type Target } from "./GitService.js"
import type { WorkspaceError } from "./Workspaces.js"

/** Every error of a file call. */
export type FilesError =
  | PathRefused
  | FileNotFound
  | FileExists
  | InvalidFileRequest
  | FileTooLarge
  | FilesUnavailable
  | WorkspaceError

/** A file opened for download: its size, and its bytes in a range. */
export interface Download {
  readonly name: string
  readonly size: number
  readonly bytes: (start: number, end: number) => Stream.Stream<Uint8Array, FilesError>
}

/** The file service. */
export class Files extends Context.Tag("vibes/Files")<
  Files,
  {
    readonly list: (
      target: Target,
      relative: string,
      offset: number,
      limit: number
    ) => Effect.Effect<DirectoryPage, FilesError>
    readonly stat: (target: Target, relative: string) => Effect.Effect<FileEntry, FilesError>
    /** `length` bytes (default: to the end) from `offset`, in chunks of 64 KiB. */
    readonly read: (
      target: Target,
      relative: string,
      offset: number,
      length: number | undefined
    ) => Stream.Stream<FileChunk, FilesError>
    /** Opens a file for a download; the descriptor stays open for the scope. */
    readonly download: (target: Target, relative: string) => Effect.Effect<Download, FilesError, Scope.Scope>
    /**
     * Writes `body` to `relative` (a new file unless `overwrite`), at most `maxBytes`: into a
     * temporary file beside it, renamed into place once complete. Answers the file and the
     * SHA-256 of what was written.
     */
    readonly upload: (
      target: Target,
      relative: string,
      body: Stream.Stream<Uint8Array, unknown>,
      options: { readonly overwrite: boolean; readonly maxBytes: number }
    ) => Effect.Effect<{ readonly entry: FileEntry; readonly sha256: string }, FilesError>
    readonly mkdir: (
      target: Target,
      relative: string,
      parents: boolean
    ) => Effect.Effect<FileEntry, FilesError>
    readonly rename: (
      target: Target,
      from: string,
      to: string,
      overwrite: boolean
    ) => Effect.Effect<FileEntry, FilesError>
    readonly remove: (target: Target, relative: string, recursive: boolean) => Effect.Effect<void, FilesError>
  }
>() {}

/** Who owns what vibes creates: the programs' account (when vibes is root), else the server's. */
export interface FilesSettings {
  readonly uid?: number
  readonly gid?: number
}

const typeOf = (stat: fs.Stats): FileType =>
  stat.isSymbolicLink() ? "symlink" : stat.isDirectory() ? "directory" : stat.isFile() ? "file" : "other"

const entryOf = (relative: string, stat: fs.Stats) =>
  FileEntry.make({
    name: path.posix.basename(relative),
    path: relative,
    type: typeOf(stat),
    size: stat.size,
    modifiedAt: DateTime.unsafeMake(stat.mtimeMs),
    mode: stat.mode & 0o7777
  })

/** A Node failure as the client's error. */
const toError =
  (relative: string, field = "path") =>
  (error: unknown): FilesError => {
    if (error instanceof Confined.PathRefused) {
      return new PathRefused({ path: error.path, reason: error.reason, message: error.message })
    }
    const code = typeof error === "object" && error !== null && "code" in error ? String(error.code) : ""
    const name = JSON.stringify(relative.slice(0, 200))
    switch (code) {
      case "ENOENT":
        return new FileNotFound({ path: relative, message: `nothing at ${name}` })
      case "EEXIST":
        return new FileExists({ path: relative, message: `${name} exists already` })
      case "ENOTDIR":
        return new InvalidFileRequest({ field, message: `${name}: a part of it is not a directory` })
      case "EISDIR":
        return new InvalidFileRequest({ field, message: `${name} is a directory` })
      case "ENOTEMPTY":
        return new InvalidFileRequest({
          field,
          message: `${name} is a directory that is not empty: delete it recursively`
        })
      case "EACCES":
      case "EPERM":
        return new InvalidFileRequest({ field, message: `${name}: permission denied` })
    }
    return new FilesUnavailable({
      message: `${name}: ${error instanceof Error ? error.message : String(error)}`
    })
  }

const attempt = <A>(relative: string, run: () => Promise<A>, field?: string) =>
  Effect.tryPromise({ try: run, catch: toError(relative, field) })

/** The path relative to the root, as the client should see it. */
const clean = (relative: string) => Confined.segments(relative).join("/")

const chunkSize = 64 * 1024
const downloadChunkSize = 1024 * 1024

/** The file service, on the git service's targets. */
export const layer = (settings: FilesSettings = {}) =>
  Layer.effect(
    Files,
    Effect.gen(function* () {
      const git = yield* GitService
      const root = (target: Target) => Effect.map(git.locate(target), (located) => located.dir)
      const own = (at: string) =>
        settings.uid === undefined
          ? Promise.resolve()
          : fs.promises.lchown(at, settings.uid, settings.gid ?? settings.uid)

      const list = (target: Target, relative: string, offset: number, limit: number) =>
        Effect.gen(function* () {
          const dir = yield* root(target)
          return yield* attempt(relative, async () => {
            const opened = await Confined.open(dir, relative, "directory")
            try {
              const names = (await fs.promises.readdir(`/proc/self/fd/${opened.fd}`)).sort()
              const page = names.slice(offset, offset + limit)
              const base = clean(relative)
              const entries: Array<FileEntry> = []
              for (const name of page) {
                const stat = await fs.promises
                  .lstat(`/proc/self/fd/${opened.fd}/${name}`)
                  .catch(() => undefined)
                if (stat !== undefined) entries.push(entryOf(base === "" ? name : `${base}/${name}`, stat))
              }
              return DirectoryPage.make({ path: base, entries, total: names.length, offset })
            } finally {
              await opened.close()
            }
          })
        }).pipe(Effect.withSpan("Files.list"))

      const stat = (target: Target, relative: string) =>
        Effect.gen(function* () {
          const dir = yield* root(target)
          if (clean(relative) === "") {
            return yield* attempt(relative, async () => {
              const opened = await Confined.open(dir, "", "directory")
              await opened.close()
              return entryOf("", opened.stat)
            })
          }
          return yield* attempt(relative, async () => {
            const parent = await Confined.openParent(dir, relative)
            try {
              return entryOf(clean(relative), await fs.promises.lstat(parent.at))
            } finally {
              await parent.dir.close()
            }
          })
        }).pipe(Effect.withSpan("Files.stat"))

      const openFile = (target: Target, relative: string) =>
        Effect.gen(function* () {
          const dir = yield* root(target)
          const opened = yield* attempt(relative, () => Confined.open(dir, relative, "read"))
          if (!opened.stat.isFile()) {
            yield* Effect.promise(opened.close)
            return yield* new InvalidFileRequest({
              field: "path",
              message: `${JSON.stringify(relative.slice(0, 200))} is not a regular file`
            })
          }
          return opened
        })

      const bytes = (
        opened: Confined.Opened,
        relative: string,
        start: number,
        end: number,
        size = chunkSize
      ) =>
        Stream.fromAsyncIterable(
          fs.createReadStream("", { fd: opened.fd, start, end, autoClose: false, highWaterMark: size }),
          toError(relative)
        ).pipe(
          Stream.map((chunk: Buffer) => new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength))
        )

      const read = (target: Target, relative: string, offset: number, length: number | undefined) =>
        Stream.unwrapScoped(
          Effect.gen(function* () {
            const opened = yield* Effect.acquireRelease(openFile(target, relative), (file) =>
              Effect.promise(file.close)
            )
            const end =
              length === undefined ? opened.stat.size - 1 : Math.min(opened.stat.size, offset + length) - 1
            if (offset >= opened.stat.size || end < offset) return Stream.empty
            let at = offset
            return bytes(opened, relative, offset, end).pipe(
              Stream.map((data) => {
                const chunk = FileChunk.make({ offset: at, data })
                at += data.length
                return chunk
              })
            )
          })
        )

      const download = (target: Target, relative: string) =>
        Effect.map(
          Effect.acquireRelease(openFile(target, relative), (file) => Effect.promise(file.close)),
          (opened): Download => ({
            name: path.basename(opened.real),
            size: opened.stat.size,
            // Larger reads for a download: a step of the stream per MiB, not per 64 KiB.
            bytes: (start, end) => bytes(opened, relative, start, end, downloadChunkSize)
          })
        )

      const upload = (
        target: Target,
        relative: string,
        body: Stream.Stream<Uint8Array, unknown>,
        options: { readonly overwrite: boolean; readonly maxBytes: number }
      ) =>
        Effect.gen(function* () {
          const dir = yield* root(target)
          const parent = yield* Effect.acquireRelease(
            attempt(relative, () => Confined.openParent(dir, relative)),
            (opened) => Effect.promise(opened.dir.close)
          )
          const temporary = `/proc/self/fd/${parent.dir.fd}/.vibes-upload-${crypto.randomUUID()}`
          const handle = yield* attempt(relative, () =>
            fs.promises.open(
              temporary,
              fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW,
              0o644
            )
          )
          const hash = crypto.createHash("sha256")
          let written = 0
          const outcome = yield* body.pipe(
            Stream.mapError(
              (error) =>
                new FilesUnavailable({
                  message: `the upload broke off: ${error instanceof Error ? error.message : String(error)}`
                }) as FilesError
            ),
            Stream.runForEach((chunk) =>
              Effect.gen(function* () {
                written += chunk.length
                if (written > options.maxBytes) {
                  return yield* new FileTooLarge({
                    limit: options.maxBytes,
                    message: `the upload is larger than the limit of ${options.maxBytes} bytes`
                  })
                }
                hash.update(chunk)
                yield* attempt(relative, () => handle.write(chunk))
              })
            ),
            Effect.zipRight(attempt(relative, () => handle.close())),
            Effect.zipRight(
              attempt(relative, async () => {
                if (!options.overwrite) {
                  const there = await fs.promises.lstat(parent.at).then(
                    () => true,
                    () => false
                  )
                  if (there) {
                    const error = new Error("exists")
                    Object.assign(error, { code: "EEXIST" })
                    throw error
                  }
                }
                await own(temporary)
                await fs.promises.rename(temporary, parent.at)
                return entryOf(clean(relative), await fs.promises.lstat(parent.at))
              })
            ),
            Effect.either
          )
          if (outcome._tag === "Left") {
            yield* Effect.promise(() => handle.close().catch(() => undefined))
            yield* Effect.promise(() => fs.promises.unlink(temporary).catch(() => undefined))
            return yield* Effect.fail(outcome.left)
          }
          return { entry: outcome.right, sha256: hash.digest("hex") }
        }).pipe(Effect.scoped, Effect.withSpan("Files.upload"))

      const mkdir = (target: Target, relative: string, parents: boolean) =>
        Effect.gen(function* () {
          const dir = yield* root(target)
          const parts = Confined.segments(relative)
          if (parts.length === 0) {
            return yield* new FileExists({ path: "", message: "the root exists already" })
          }
          const steps = parents ? parts.map((_, i) => parts.slice(0, i + 1).join("/")) : [parts.join("/")]
          let last: FileEntry | undefined
          for (const step of steps) {
            last = yield* attempt(step, async () => {
              const parent = await Confined.openParent(dir, step)
              try {
                try {
                  await fs.promises.mkdir(parent.at, { mode: 0o755 })
                  await own(parent.at)
                } catch (error) {
                  if (!(parents && Confined.isCode(error, "EEXIST") && step !== steps[steps.length - 1]))
                    throw error
                }
                return entryOf(step, await fs.promises.lstat(parent.at))
              } finally {
                await parent.dir.close()
              }
            })
          }
          return (
            last ??
            (yield* Effect.fail(new InvalidFileRequest({ field: "path", message: "name a directory" })))
          )
        }).pipe(Effect.withSpan("Files.mkdir"))

      const rename = (target: Target, from: string, to: string, overwrite: boolean) =>
        Effect.gen(function* () {
          const dir = yield* root(target)
          return yield* attempt(from, async () => {
            const source = await Confined.openParent(dir, from)
            try {
              const destination = await Confined.openParent(dir, to)
              try {
                await fs.promises.lstat(source.at)
                if (!overwrite) {
                  const there = await fs.promises.lstat(destination.at).then(
                    () => true,
                    () => false
                  )
                  if (there) throw Object.assign(new Error("exists"), { code: "EEXIST" })
                }
                await fs.promises.rename(source.at, destination.at)
                return entryOf(clean(to), await fs.promises.lstat(destination.at))
              } finally {
                await destination.dir.close()
              }
            } finally {
              await source.dir.close()
            }
          })
        }).pipe(Effect.withSpan("Files.rename"))

      const remove = (target: Target, relative: string, recursive: boolean) =>
        Effect.gen(function* () {
          const dir = yield* root(target)
          yield* attempt(relative, async () => {
            const parent = await Confined.openParent(dir, relative)
            try {
              const stat = await fs.promises.lstat(parent.at)
              if (stat.isDirectory()) {
                if (recursive) await fs.promises.rm(parent.at, { recursive: true })
                else await fs.promises.rmdir(parent.at)
              } else await fs.promises.unlink(parent.at)
            } finally {
              await parent.dir.close()
            }
          })
        }).pipe(Effect.withSpan("Files.delete"))

      return Files.of({ list, stat, read, download, upload, mkdir, rename, remove })
    })
  )
