/**
 * Which storage backend a node runs, read from its environment:
 *
 * - `VIBES_STORAGE`: `local` (the default: files under `VIBES_STORAGE_DIR`, by default
 *   `<data dir>/storage`) or `s3`.
 * - `VIBES_S3_BUCKET` (required for s3), `VIBES_S3_REGION` (default `us-east-1`),
 *   `VIBES_S3_ENDPOINT` (an S3-compatible server's URL; AWS when unset),
 *   `VIBES_S3_FORCE_PATH_STYLE` (`true` for most self-hosted servers), and the credentials
 *   `VIBES_S3_ACCESS_KEY_ID` with `VIBES_S3_SECRET_ACCESS_KEY` (both or neither: neither uses the
 *   AWS SDK's usual chain).
 */
import * as path from "node:path"
import { Config, ConfigError, Either, type Layer, Option } from "effect"
import * as LocalStorage from "./LocalStorage.js"
import * as S3Storage from "./S3Storage.js"
import type { Storage, StorageError } from "./Storage.js"

/** The backend a node runs, with what it needs to start. */
export type StorageBackend =
  | { readonly _tag: "Local"; readonly dir: Option.Option<string> }
  | ({ readonly _tag: "S3" } & S3Storage.S3Settings)

const invalid = (name: string, why: string) => ConfigError.InvalidData([name], `${name} ${why}`)

const bucketPattern = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/

/** The backend from `VIBES_STORAGE` and its settings. */
export const config: Config.Config<StorageBackend> = Config.all({
  name: Config.string("VIBES_STORAGE").pipe(
    Config.withDefault("local"),
    Config.mapOrFail((value) => {
      const name = value.trim().toLowerCase()
      return name === "local" || name === "s3"
        ? Either.right(name)
        : Either.left(invalid("VIBES_STORAGE", `must be local or s3 (got '${value.slice(0, 40)}')`))
    })
  ),
  dir: Config.string("VIBES_STORAGE_DIR").pipe(
    Config.mapOrFail((dir) =>
      path.isAbsolute(dir)
        ? Either.right(dir)
        : Either.left(invalid("VIBES_STORAGE_DIR", "must be an absolute path"))
    ),
    Config.option
  ),
  endpoint: Config.string("VIBES_S3_ENDPOINT").pipe(
    Config.mapOrFail((url) =>
      /^https?:\/\/[^\s/]+/.test(url)
        ? Either.right(url)
        : Either.left(invalid("VIBES_S3_ENDPOINT", "must be an http(s) URL such as http://127.0.0.1:9000"))
    ),
    Config.option
  ),
  region: Config.string("VIBES_S3_REGION").pipe(
    Config.mapOrFail((region) =>
      /^[a-z0-9-]{1,32}$/.test(region)
        ? Either.right(region)
        : Either.left(invalid("VIBES_S3_REGION", "must be a region name such as eu-west-1"))
    ),
    Config.withDefault("us-east-1")
  ),
  bucket: Config.string("VIBES_S3_BUCKET").pipe(
    Config.mapOrFail((bucket) =>
      bucketPattern.test(bucket)
        ? Either.right(bucket)
        : Either.left(
            invalid(
              "VIBES_S3_BUCKET",
              "must be a bucket name: 3 to 63 lower-case letters, digits, '.' or '-'"
            )
          )
    ),
    Config.option
  ),
  forcePathStyle: Config.boolean("VIBES_S3_FORCE_PATH_STYLE").pipe(Config.withDefault(false)),
  accessKeyId: Config.redacted("VIBES_S3_ACCESS_KEY_ID").pipe(Config.option),
  secretAccessKey: Config.redacted("VIBES_S3_SECRET_ACCESS_KEY").pipe(Config.option)
}).pipe(
  Config.mapOrFail(({ name, dir, bucket, ...s3 }): Either.Either<StorageBackend, ConfigError.ConfigError> => {
    if (name === "local") return Either.right({ _tag: "Local", dir })
    if (Option.isNone(bucket))
      return Either.left(invalid("VIBES_S3_BUCKET", "must be set when VIBES_STORAGE=s3"))
    if (Option.isSome(s3.accessKeyId) !== Option.isSome(s3.secretAccessKey)) {
      return Either.left(
        invalid("VIBES_S3_SECRET_ACCESS_KEY", "and VIBES_S3_ACCESS_KEY_ID must be set together, or neither")
      )
    }
    return Either.right({ _tag: "S3", bucket: bucket.value, ...s3 })
  })
)

/** The local backend under `<dataDir>/storage`, for tests and defaults. */
export const local: StorageBackend = { _tag: "Local", dir: Option.none() }

/** The `Storage` layer of `backend`; the local one lives under `dataDir` unless it names a dir. */
export const layer = (backend: StorageBackend, dataDir: string): Layer.Layer<Storage, StorageError> =>
  backend._tag === "Local"
    ? LocalStorage.layer(Option.getOrElse(backend.dir, () => path.join(dataDir, "storage")))
    : S3Storage.layer(backend)
