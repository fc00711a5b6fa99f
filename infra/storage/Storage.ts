/**
 * Object storage for what jobs build and what sessions record: put and get as streams, ranged
 * reads, head, paged listing by prefix, delete. The backends (`LocalStorage`: files under the
 * data directory; `S3Storage`: any S3-compatible server) sit beside this module; callers see only
 * `Storage`.
 *
 * Every key lives under a tenant: `<tenant>/<path>`. Keys are made only by `key` and `prefix`,
 * which refuse anything that could leave the tenant's prefix or mean something else to a file
 * system or an HTTP server (`..`, `.`, empty segments, absolute paths, backslashes, NUL and other
 * control characters, percent-encoded escapes).
 */
import { Context, Effect, Either, type Option, Schema, type Scope, Stream } from "effect"

/** A checked key, `<tenant>/<path>`: made only by `key` (or `prefix` for listing). */
const ObjectKey = Schema.String.pipe(Schema.brand("ObjectKey"))
export type ObjectKey = typeof ObjectKey.Type

/** The key (or prefix) was refused; nothing was read or written. */
export class InvalidKey extends Schema.TaggedError<InvalidKey>()("InvalidKey", {
  key: Schema.String,
  message: Schema.String
}) {}

/** No object has this key. */
export class ObjectNotFound extends Schema.TaggedError<ObjectNotFound>()("ObjectNotFound", {
  key: Schema.String,
  message: Schema.String
}) {}

/** The range asks for bytes the object does not have. */
export class InvalidRange extends Schema.TaggedError<InvalidRange>()("InvalidRange", {
  key: Schema.String,
  size: Schema.Number,
  message: Schema.String
}) {}

/** The backend failed (a disk or network error); what was being written is not visible. */
export class StorageError extends Schema.TaggedError<StorageError>()("StorageError", {
  key: Schema.String,
  message: Schema.String
}) {}

/** What is known of a stored object. */
export interface ObjectInfo {
  readonly key: ObjectKey
  readonly size: number
  readonly lastModified: Date
  /** Hex SHA-256 of the content, from `head` where the backend keeps it (local: yes; S3: no); never in listings. */
  readonly sha256: Option.Option<string>
}

/** What `put` wrote. */
export interface PutResult {
  readonly key: ObjectKey
  readonly size: number
  /** Hex SHA-256 of the bytes written, computed while they streamed. */
  readonly sha256: string
}

/** Bytes `start` to `end` (inclusive; the last byte when omitted), as in an HTTP `Range`. */
export interface ByteRange {
  readonly start: number
  readonly end?: number | undefined
}

/** An open read: the object's info, the bytes it will give (inclusive), and the bytes. */
export interface Download {
  readonly info: ObjectInfo
  readonly start: number
  /** The last byte's offset; `start - 1` for an empty object. */
  readonly end: number
  readonly body: Stream.Stream<Uint8Array, StorageError>
}

/** One page of a listing, in key order; `next` continues it. */
export interface Page {
  readonly objects: ReadonlyArray<ObjectInfo>
  readonly next: Option.Option<string>
}

/** The most objects one `list` page holds. */
export const maxPageSize = 1000

/** The longest key accepted, in UTF-8 bytes (S3's limit). */
export const maxKeyBytes = 1024

/** The blob store. */
export class Storage extends Context.Tag("vibes/Storage")<
  Storage,
  {
    /** Which backend this is, for logs and `vibes status`. */
    readonly backend: "local" | "s3"
    /**
     * Stores `body` under `key`, replacing what was there. Nothing is visible under `key` until
     * the whole body is stored; a failed or interrupted put leaves the old object (or none).
     */
    readonly put: <E, R>(
      key: ObjectKey,
      body: Stream.Stream<Uint8Array, E, R>,
      options?: { readonly contentType?: string }
    ) => Effect.Effect<PutResult, StorageError | E, R>
    /** Opens `key` (or part of it) for reading; the read is closed with the scope. */
    readonly get: (
      key: ObjectKey,
      range?: ByteRange
    ) => Effect.Effect<Download, ObjectNotFound | InvalidRange | StorageError, Scope.Scope>
    readonly head: (key: ObjectKey) => Effect.Effect<ObjectInfo, ObjectNotFound | StorageError>
    /** Objects whose key starts with `prefix`, in key order, after the cursor `after`. */
    readonly list: (
      prefix: ObjectKey,
      options?: { readonly after?: string | undefined; readonly limit?: number | undefined }
    ) => Effect.Effect<Page, StorageError>
    /** Removes `key`; removing what is not there succeeds. */
    readonly delete: (key: ObjectKey) => Effect.Effect<void, StorageError>
  }
>() {}

const tenantPattern = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/

/** Why `path` cannot be a key's path (or, with `partial`, a listing prefix), or `undefined`. */
export const pathIssue = (path: string, partial = false): string | undefined => {
  if (path === "" && !partial) return "is empty"
  if (Buffer.byteLength(path, "utf8") > maxKeyBytes - 65) return `is longer than ${maxKeyBytes - 65} bytes`
  for (let i = 0; i < path.length; i++) {
    const code = path.charCodeAt(i)
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) return "contains a control character"
  }
  if (/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(path))
    return "contains an unpaired surrogate"
  if (path.includes("\\")) return "contains a backslash"
  if (/%[0-9A-Fa-f]{2}/.test(path)) return "contains a percent-encoded escape"
  if (path.startsWith("/")) return "is absolute"
  const segments = path.split("/")
  // A prefix may end in a half-written segment (or a '/'), but never in '.' or '..'.
  const whole = partial ? segments.slice(0, -1) : segments
  for (const segment of whole) {
    if (segment === "") return "has an empty segment ('//')"
    if (segment === "." || segment === "..") return `has a '${segment}' segment`
  }
  const last = segments[segments.length - 1]
  if (partial && (last === "." || last === "..")) return `has a '${last}' segment`
  return undefined
}

const make = (tenant: string, path: string, partial: boolean): Either.Either<ObjectKey, InvalidKey> => {
  const shown = `${tenant}/${path}`.slice(0, 200)
  if (!tenantPattern.test(tenant)) {
    return Either.left(
      new InvalidKey({
        key: shown,
        message: `tenant '${tenant.slice(0, 64)}' is not 1 to 64 letters, digits, '_' or '-'`
      })
    )
  }
  const issue = pathIssue(path, partial)
  return issue === undefined
    ? Either.right(ObjectKey.make(`${tenant}/${path}`))
    : Either.left(new InvalidKey({ key: shown, message: `the key ${JSON.stringify(shown)} ${issue}` }))
}

/** The key of `path` in `tenant`'s space. */
export const key = (tenant: string, path: string): Either.Either<ObjectKey, InvalidKey> =>
  make(tenant, path, false)

/** A listing prefix in `tenant`'s space (`""` lists the whole tenant). */
export const prefix = (tenant: string, path: string): Either.Either<ObjectKey, InvalidKey> =>
  make(tenant, path, true)

/** `key` as an effect. */
export const checkedKey = (tenant: string, path: string): Effect.Effect<ObjectKey, InvalidKey> =>
  Either.match(key(tenant, path), { onLeft: Effect.fail, onRight: Effect.succeed })

/** The bytes of `key` (or a range of them) as one stream; the read is closed when it ends. */
export const stream = (
  storage: Context.Tag.Service<Storage>,
  key: ObjectKey,
  range?: ByteRange
): Stream.Stream<Uint8Array, ObjectNotFound | InvalidRange | StorageError> =>
  Stream.unwrapScoped(Effect.map(storage.get(key, range), (download) => download.body))

/** The inclusive bounds of `range` on an object of `size` bytes, or why it does not fit. */
export const resolveRange = (
  key: string,
  size: number,
  range: ByteRange | undefined
): Either.Either<{ readonly start: number; readonly end: number }, InvalidRange> => {
  if (range === undefined) return Either.right({ start: 0, end: size - 1 })
  const end = Math.min(range.end ?? size - 1, size - 1)
  if (
    !Number.isSafeInteger(range.start) ||
    range.start < 0 ||
    (range.end !== undefined && (!Number.isSafeInteger(range.end) || range.end < range.start)) ||
    range.start >= size
  ) {
    return Either.left(
      new InvalidRange({
        key,
        size,
        message: `bytes ${range.start}-${range.end ?? ""} are not within the object's ${size} bytes`
      })
    )
  }
  return Either.right({ start: range.start, end })
}
