/**
 * The S3 backend of `Storage`, on the official AWS SDK v3 and only the standard S3 API, so any
 * S3-compatible server does (AWS, MinIO, Ceph, s3rver, …).
 *
 * Puts stream through `@aws-sdk/lib-storage`: one `PutObject` for a body under one part,
 * a multipart upload (parts of `partSize`, two in flight) above it, aborted when the body fails or
 * the put is interrupted, so nothing becomes visible. Ranged gets are pinned to the ETag the
 * head saw (`If-Match`), so a read never mixes two versions of an object. Listing pages by key
 * (`StartAfter`), the same cursor the local backend uses.
 *
 * The client asks for request and response checksums only where an operation requires them:
 * the SDK's default trailing CRC checksums are something many S3-compatible servers refuse.
 */
import { createHash } from "node:crypto"
import { Readable } from "node:stream"
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client
} from "@aws-sdk/client-s3"
import { Upload } from "@aws-sdk/lib-storage"
import { Effect, Layer, Option, Redacted, Ref, Stream } from "effect"
import * as NodeStream from "@effect/platform-node/NodeStream"
import {
  type Download,
  maxPageSize,
  type ObjectInfo,
  ObjectNotFound,
  type ObjectKey,
  type PutResult,
  resolveRange,
  Storage,
  StorageError
} from "./Storage.js"

/** Where the bucket is and how to reach it. */
export interface S3Settings {
  /** The server's URL; AWS's regional endpoint when none. */
  readonly endpoint: Option.Option<string>
  readonly region: string
  readonly bucket: string
  /** `https://host/bucket/key` instead of `https://bucket.host/key` (most self-hosted servers). */
  readonly forcePathStyle: boolean
  /** Both or neither; neither uses the SDK's usual chain (environment, profile, instance role). */
  readonly accessKeyId: Option.Option<Redacted.Redacted<string>>
  readonly secretAccessKey: Option.Option<Redacted.Redacted<string>>
  /** Bytes a multipart part holds (at least 5 MiB, S3's minimum). */
  readonly partSize?: number
}

/** S3's smallest part (except the last). */
export const minPartSize = 5 * 1024 * 1024

const statusOf = (cause: unknown): number | undefined => {
  if (typeof cause !== "object" || cause === null || !("$metadata" in cause)) return undefined
  const metadata = cause.$metadata
  return typeof metadata === "object" &&
    metadata !== null &&
    "httpStatusCode" in metadata &&
    typeof metadata.httpStatusCode === "number"
    ? metadata.httpStatusCode
    : undefined
}

const describe = (cause: unknown): string =>
  cause instanceof Error ? `${cause.name}: ${cause.message}` : String(cause)

/** The SDK client for `settings`. */
export const client = (settings: S3Settings): S3Client => {
  // The SDK warns on every process that Node 20 is nearing its end of support there; vibes
  // supports Node 20, and the warning would land in the server's JSON log as a bare line.
  process.env["AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED"] ??= "true"
  const credentials = Option.all([settings.accessKeyId, settings.secretAccessKey]).pipe(
    Option.map(([id, secret]) => ({
      accessKeyId: Redacted.value(id),
      secretAccessKey: Redacted.value(secret)
    }))
  )
  return new S3Client({
    region: settings.region,
    forcePathStyle: settings.forcePathStyle,
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    ...(Option.isSome(settings.endpoint) ? { endpoint: settings.endpoint.value } : {}),
    ...(Option.isSome(credentials) ? { credentials: credentials.value } : {})
  })
}

/** A `Storage` on `settings.bucket`; the client is destroyed with the scope. */
export const make = (settings: S3Settings) =>
  Effect.gen(function* () {
    const s3 = yield* Effect.acquireRelease(
      Effect.sync(() => client(settings)),
      (s3) => Effect.sync(() => s3.destroy())
    )
    const Bucket = settings.bucket
    const partSize = Math.max(settings.partSize ?? minPartSize, minPartSize)

    const fail = (key: string, doing: string) => (cause: unknown) =>
      new StorageError({ key, message: `cannot ${doing} ${key} in bucket ${Bucket}: ${describe(cause)}` })
    const notFound = (key: string) => new ObjectNotFound({ key, message: `no object has the key ${key}` })

    const put = <E, R>(
      key: ObjectKey,
      body: Stream.Stream<Uint8Array, E, R>,
      options: { readonly contentType?: string } = {}
    ): Effect.Effect<PutResult, StorageError | E, R> =>
      Effect.gen(function* () {
        const hash = createHash("sha256")
        let size = 0
        const bodyFailure = yield* Ref.make(Option.none<E>())
        const readable = yield* NodeStream.toReadable(
          body.pipe(
            Stream.tap((chunk) =>
              Effect.sync(() => {
                hash.update(chunk)
                size += chunk.length
              })
            ),
            Stream.tapError((error) => Ref.set(bodyFailure, Option.some(error)))
          )
        )
        const upload = new Upload({
          client: s3,
          partSize,
          queueSize: 2,
          leavePartsOnError: false,
          params: {
            Bucket,
            Key: key,
            Body: readable,
            ...(options.contentType !== undefined ? { ContentType: options.contentType } : {})
          }
        })
        const uploaded = yield* Effect.tryPromise({ try: () => upload.done(), catch: (cause) => cause }).pipe(
          Effect.onInterrupt(() =>
            Effect.promise(() => upload.abort().catch(() => undefined)).pipe(
              Effect.andThen(Effect.sync(() => readable.destroy()))
            )
          ),
          Effect.either
        )
        if (uploaded._tag === "Left") {
          const failed = yield* Ref.get(bodyFailure)
          // The body's own error is the caller's to see, typed as it was.
          if (Option.isSome(failed)) return yield* Effect.fail(failed.value)
          return yield* Effect.fail(fail(key, "write")(uploaded.left))
        }
        return { key, size, sha256: hash.digest("hex") }
      }).pipe(Effect.withSpan("S3Storage.put", { attributes: { key } }))

    const headObject = (key: ObjectKey) =>
      Effect.tryPromise({
        try: (signal) => s3.send(new HeadObjectCommand({ Bucket, Key: key }), { abortSignal: signal }),
        catch: (cause) => (statusOf(cause) === 404 ? notFound(key) : fail(key, "read")(cause))
      })

    const head: Storage["Type"]["head"] = (key) =>
      Effect.map(headObject(key), (found): ObjectInfo => ({
        key,
        size: found.ContentLength ?? 0,
        lastModified: found.LastModified ?? new Date(0),
        sha256: Option.fromNullable(found.Metadata?.["sha256"])
      }))

    const get: Storage["Type"]["get"] = (key, range) =>
      Effect.gen(function* () {
        const found = yield* headObject(key)
        const size = found.ContentLength ?? 0
        const bounds = yield* resolveRange(key, size, range)
        const info: ObjectInfo = {
          key,
          size,
          lastModified: found.LastModified ?? new Date(0),
          sha256: Option.fromNullable(found.Metadata?.["sha256"])
        }
        if (bounds.end < bounds.start) {
          return { info, start: bounds.start, end: bounds.end, body: Stream.empty } satisfies Download
        }
        const response = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: (signal) =>
              s3.send(
                new GetObjectCommand({
                  Bucket,
                  Key: key,
                  ...(found.ETag !== undefined ? { IfMatch: found.ETag } : {}),
                  ...(bounds.start > 0 || bounds.end < size - 1
                    ? { Range: `bytes=${bounds.start}-${bounds.end}` }
                    : {})
                }),
                { abortSignal: signal }
              ),
            catch: (cause) =>
              statusOf(cause) === 404
                ? notFound(key)
                : statusOf(cause) === 412
                  ? new StorageError({
                      key,
                      message: `${key} was replaced while it was being read; read it again`
                    })
                  : fail(key, "read")(cause)
          }),
          (response) =>
            Effect.sync(() => {
              if (response.Body instanceof Readable) response.Body.destroy()
            })
        )
        const source = response.Body
        if (!(source instanceof Readable)) {
          return yield* new StorageError({ key, message: `the S3 client gave no readable body for ${key}` })
        }
        const body = NodeStream.fromReadable<StorageError, Uint8Array>(() => source, fail(key, "read"))
        return { info, start: bounds.start, end: bounds.end, body } satisfies Download
      })

    const list: Storage["Type"]["list"] = (prefix, options = {}) =>
      Effect.gen(function* () {
        const limit = Math.max(1, Math.min(options.limit ?? maxPageSize, maxPageSize))
        const page = yield* Effect.tryPromise({
          try: (signal) =>
            s3.send(
              new ListObjectsV2Command({
                Bucket,
                Prefix: prefix,
                MaxKeys: limit,
                ...(options.after !== undefined ? { StartAfter: options.after } : {})
              }),
              { abortSignal: signal }
            ),
          catch: fail(prefix, "list")
        })
        const objects = (page.Contents ?? []).flatMap((entry): Array<ObjectInfo> =>
          entry.Key === undefined
            ? []
            : [
                {
                  key: entry.Key as ObjectKey,
                  size: entry.Size ?? 0,
                  lastModified: entry.LastModified ?? new Date(0),
                  sha256: Option.none()
                }
              ]
        )
        const last = objects[objects.length - 1]
        return {
          objects,
          next:
            page.IsTruncated === true && last !== undefined ? Option.some<string>(last.key) : Option.none()
        }
      })

    const remove: Storage["Type"]["delete"] = (key) =>
      Effect.tryPromise({
        try: (signal) => s3.send(new DeleteObjectCommand({ Bucket, Key: key }), { abortSignal: signal }),
        catch: fail(key, "delete")
      }).pipe(Effect.asVoid)

    return Storage.of({ backend: "s3", put, get, head, list, delete: remove })
  })

/** `Storage` on an S3 bucket. */
export const layer = (settings: S3Settings): Layer.Layer<Storage> => Layer.scoped(Storage, make(settings))
