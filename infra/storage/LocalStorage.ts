/**
 * The local file system backend of `Storage`: objects are files under one root directory
 * (by default `<data dir>/storage`).
 *
 * - `objects/<tenant>/<path>`: the content. A put streams into `tmp/<uuid>`, syncs it and renames
 *   it into place, so a reader sees the whole old object or the whole new one, and a failed or
 *   interrupted put leaves nothing.
 * - `sha256/<tenant>/<path>`: `{ sha256, size, ino }` of the content, written before the rename;
 *   it counts only while `ino` is the content file's inode, so it can never describe other bytes.
 *
 * A file system cannot hold both `a` and `a/b`: putting one while the other exists fails with a
 * `StorageError` that says so (S3 allows both).
 */
import { createHash, randomUUID } from "node:crypto"
import type { Dirent } from "node:fs"
import * as fsp from "node:fs/promises"
import * as path from "node:path"
import { Effect, Layer, Option, Schema, Stream } from "effect"
import * as NodeStream from "@effect/platform-node/NodeStream"
import {
  type Download,
  maxPageSize,
  type ObjectInfo,
  ObjectNotFound,
  type ObjectKey,
  resolveRange,
  Storage,
  StorageError
} from "./Storage.js"

const Sidecar = Schema.parseJson(
  Schema.Struct({ sha256: Schema.String, size: Schema.Number, ino: Schema.Number })
)
const decodeSidecar = Schema.decodeUnknownOption(Sidecar)

const errnoOf = (cause: unknown): string | undefined =>
  typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string"
    ? cause.code
    : undefined

const missing = (cause: unknown) => {
  const code = errnoOf(cause)
  return code === "ENOENT" || code === "ENOTDIR"
}

/** Writes all of `chunk` (one `write` may take only part of it). */
const writeAll = async (handle: fsp.FileHandle, chunk: Uint8Array) => {
  let written = 0
  while (written < chunk.length) {
    const { bytesWritten } = await handle.write(chunk, written, chunk.length - written)
    written += bytesWritten
  }
}

/** A `Storage` on files under `root` (created when missing, private to this user). */
export const make = (root: string): Effect.Effect<Storage["Type"], StorageError> =>
  Effect.gen(function* () {
    const objects = path.join(root, "objects")
    const sums = path.join(root, "sha256")
    const tmp = path.join(root, "tmp")
    yield* Effect.tryPromise({
      try: async () => {
        for (const dir of [root, objects, sums, tmp]) await fsp.mkdir(dir, { recursive: true, mode: 0o700 })
      },
      catch: (cause) => new StorageError({ key: "", message: `cannot create ${root}: ${String(cause)}` })
    })

    const fail = (key: string, doing: string) => (cause: unknown) =>
      new StorageError({ key, message: `cannot ${doing} ${key}: ${String(cause)}` })
    const notFound = (key: string) => new ObjectNotFound({ key, message: `no object has the key ${key}` })

    // Keys are checked (no '.', '..' or empty segments), so a join stays under its root; this is
    // the second lock on that door.
    const under = (base: string, key: ObjectKey) => {
      const file = path.join(base, ...key.split("/"))
      if (!file.startsWith(base + path.sep)) throw new Error(`the key ${key} leaves ${base}`)
      return file
    }

    const info = (key: ObjectKey, stat: { size: number; mtime: Date; ino: number }) =>
      Effect.promise(() => fsp.readFile(under(sums, key), "utf8").catch(() => "")).pipe(
        Effect.map((text): ObjectInfo => ({
          key,
          size: stat.size,
          lastModified: stat.mtime,
          sha256: Option.flatMap(decodeSidecar(text), (sidecar) =>
            sidecar.ino === stat.ino && sidecar.size === stat.size
              ? Option.some(sidecar.sha256)
              : Option.none()
          )
        }))
      )

    const put: Storage["Type"]["put"] = (key, body) => {
      const temp = path.join(tmp, randomUUID())
      const write = Effect.acquireUseRelease(
        Effect.tryPromise({ try: () => fsp.open(temp, "wx", 0o600), catch: fail(key, "write") }),
        (handle) =>
          Effect.gen(function* () {
            const hash = createHash("sha256")
            let size = 0
            yield* Stream.runForEach(body, (chunk) => {
              hash.update(chunk)
              size += chunk.length
              return Effect.tryPromise({ try: () => writeAll(handle, chunk), catch: fail(key, "write") })
            })
            const stat = yield* Effect.tryPromise({
              try: async () => {
                await handle.sync()
                return handle.stat()
              },
              catch: fail(key, "write")
            })
            return { size, sha256: hash.digest("hex"), ino: stat.ino }
          }),
        (handle) => Effect.promise(() => handle.close().catch(() => undefined))
      )
      return write.pipe(
        Effect.flatMap((written) =>
          Effect.tryPromise({
            try: async () => {
              const file = under(objects, key)
              const sum = under(sums, key)
              await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 })
              await fsp.mkdir(path.dirname(sum), { recursive: true, mode: 0o700 })
              const sumTemp = `${temp}.sha256`
              await fsp.writeFile(sumTemp, JSON.stringify(written), { mode: 0o600 })
              await fsp.rename(sumTemp, sum)
              await fsp.rename(temp, file)
              return { key, size: written.size, sha256: written.sha256 }
            },
            catch: (cause) =>
              new StorageError({
                key,
                message: ["ENOTDIR", "EISDIR", "EEXIST"].includes(errnoOf(cause) ?? "")
                  ? `cannot write ${key}: a part of its path is an object, or the key names a folder of other objects`
                  : `cannot write ${key}: ${String(cause)}`
              })
          })
        ),
        Effect.onExit(() =>
          Effect.promise(() =>
            Promise.all([fsp.rm(temp, { force: true }), fsp.rm(`${temp}.sha256`, { force: true })])
          )
        ),
        Effect.withSpan("LocalStorage.put", { attributes: { key } })
      )
    }

    const head: Storage["Type"]["head"] = (key) =>
      Effect.tryPromise({
        try: () => fsp.stat(under(objects, key)),
        catch: (cause): ObjectNotFound | StorageError =>
          missing(cause) ? notFound(key) : fail(key, "read")(cause)
      }).pipe(
        Effect.filterOrFail(
          (stat) => stat.isFile(),
          () => notFound(key)
        ),
        Effect.flatMap((stat) => info(key, stat))
      )

    const get: Storage["Type"]["get"] = (key, range) =>
      Effect.gen(function* () {
        const handle = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: () => fsp.open(under(objects, key), "r"),
            catch: (cause) => (missing(cause) ? notFound(key) : fail(key, "read")(cause))
          }),
          (handle) => Effect.promise(() => handle.close().catch(() => undefined))
        )
        const stat = yield* Effect.tryPromise({ try: () => handle.stat(), catch: fail(key, "read") })
        if (!stat.isFile()) return yield* notFound(key)
        const bounds = yield* resolveRange(key, stat.size, range)
        const objectInfo = yield* info(key, stat)
        const body =
          bounds.end < bounds.start
            ? Stream.empty
            : NodeStream.fromReadable<StorageError, Uint8Array>(
                () =>
                  handle.createReadStream({
                    start: bounds.start,
                    end: bounds.end,
                    autoClose: false,
                    highWaterMark: 256 * 1024
                  }),
                fail(key, "read")
              )
        return { info: objectInfo, start: bounds.start, end: bounds.end, body } satisfies Download
      })

    const walk = async (dir: string, into: Array<string>): Promise<void> => {
      let entries: Array<Dirent>
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true })
      } catch (cause) {
        if (missing(cause)) return
        throw cause
      }
      for (const entry of entries) {
        const full = path.join(dir, entry.name)
        if (entry.isDirectory()) await walk(full, into)
        else if (entry.isFile()) into.push(path.relative(objects, full).split(path.sep).join("/"))
      }
    }

    const list: Storage["Type"]["list"] = (prefix, options = {}) =>
      Effect.gen(function* () {
        const limit = Math.max(1, Math.min(options.limit ?? maxPageSize, maxPageSize))
        const slash = prefix.lastIndexOf("/")
        const start = path.join(objects, ...prefix.slice(0, slash).split("/"))
        const keys = yield* Effect.tryPromise({
          try: async () => {
            const found: Array<string> = []
            await walk(start, found)
            return found
          },
          catch: fail(prefix, "list")
        })
        // In UTF-8 byte order, as S3 lists: each key encoded once, not once a comparison.
        const after = options.after === undefined ? undefined : Buffer.from(options.after)
        const matching = keys
          .filter((key) => key.startsWith(prefix))
          .map((key) => ({ key, bytes: Buffer.from(key) }))
          .filter((entry) => after === undefined || Buffer.compare(entry.bytes, after) > 0)
          .sort((a, b) => Buffer.compare(a.bytes, b.bytes))
          .map((entry) => entry.key)
        const page = matching.slice(0, limit) as Array<ObjectKey>
        // Sizes and times only, as S3 lists them: `head` has the sha256.
        const infos = yield* Effect.forEach(
          page,
          (key) =>
            Effect.tryPromise({ try: () => fsp.stat(under(objects, key)), catch: fail(key, "list") }).pipe(
              Effect.map((stat): ObjectInfo => ({
                key,
                size: stat.size,
                lastModified: stat.mtime,
                sha256: Option.none()
              })),
              Effect.option
            ),
          { concurrency: 64 }
        )
        const last = page[page.length - 1]
        return {
          objects: infos.flatMap((found) => (Option.isSome(found) ? [found.value] : [])),
          next: matching.length > limit && last !== undefined ? Option.some(last) : Option.none()
        }
      })

    const remove: Storage["Type"]["delete"] = (key) =>
      Effect.tryPromise({
        try: async () => {
          await fsp.rm(under(objects, key), { force: true })
          await fsp.rm(under(sums, key), { force: true })
          // Empty folders left behind go too, up to (not including) the tenant's.
          for (const base of [objects, sums]) {
            let dir = path.dirname(under(base, key))
            const tenantDir = path.join(base, key.split("/")[0] ?? "")
            while (dir.startsWith(tenantDir + path.sep)) {
              const gone = await fsp.rmdir(dir).then(
                () => true,
                () => false
              )
              if (!gone) break
              dir = path.dirname(dir)
            }
          }
        },
        catch: fail(key, "delete")
      })

    return Storage.of({ backend: "local", put, get, head, list, delete: remove })
  })

/** `Storage` on files under `root`. */
export const layer = (root: string): Layer.Layer<Storage, StorageError> => Layer.effect(Storage, make(root))
