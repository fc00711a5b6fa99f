/**
 * Artifacts: files a job left in its working directory that matched its `artifacts` globs, kept in
 * the node's storage (local files or S3) once the job ended, with their size and sha256. The
 * `Artifacts` RPC group lists them and streams one back.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"
import { JobId, JobNotFound, JobsUnavailable } from "./Jobs.js"
import { BoundedText } from "./Text.js"

/** An artifact's name: its path relative to the job's working directory (`dist/app.js`). */
export const ArtifactName = BoundedText(900).pipe(Schema.filter((name) => name !== "" || "is empty"))

/** One kept file. */
export class ArtifactInfo extends Schema.Class<ArtifactInfo>("ArtifactInfo")({
  jobId: JobId,
  name: Schema.String,
  size: Schema.Number,
  /** Hex SHA-256 of the content, computed as it was stored. */
  sha256: Schema.String,
  createdAt: Schema.DateTimeUtc
}) {}

/** The job has no artifact of that name. */
export class ArtifactNotFound extends Schema.TaggedError<ArtifactNotFound>()("ArtifactNotFound", {
  jobId: Schema.String,
  name: Schema.String,
  message: Schema.String
}) {}

/** The storage could not be reached or read; nothing was changed. Retry later. */
export class StorageUnavailable extends Schema.TaggedError<StorageUnavailable>()("StorageUnavailable", {
  message: Schema.String
}) {}

/** The request was refused as it stands (an offset past the end): the message says why. */
export class InvalidArtifactRequest extends Schema.TaggedError<InvalidArtifactRequest>()(
  "InvalidArtifactRequest",
  {
    message: Schema.String
  }
) {}

export const ArtifactError = Schema.Union(
  JobNotFound,
  ArtifactNotFound,
  InvalidArtifactRequest,
  JobsUnavailable,
  StorageUnavailable
)
export type ArtifactError = typeof ArtifactError.Type

const ByName = { jobId: JobId, name: ArtifactName }

/** `Download`: the bytes of one artifact, from byte `offset` on (to resume a broken download). */
export class DownloadArtifact extends Schema.Class<DownloadArtifact>("DownloadArtifact")({
  ...ByName,
  offset: Schema.optionalWith(Schema.Int.pipe(Schema.nonNegative()), { default: () => 0 })
}) {}

/** Everything a client can ask of artifacts. */
export class ArtifactsRpcs extends RpcGroup.make(
  Rpc.make("List", { payload: { jobId: JobId }, success: Schema.Array(ArtifactInfo), error: ArtifactError }),
  Rpc.make("Get", { payload: ByName, success: ArtifactInfo, error: ArtifactError }),
  Rpc.make("Download", {
    payload: DownloadArtifact,
    success: Schema.Uint8ArrayFromSelf,
    error: ArtifactError,
    stream: true
  })
)
  .prefix("Artifacts.")
  .middleware(AuthMiddleware) {}
