/**
 * The file service: list, stat, read (ranged, streamed), create directories, rename and delete,
 * inside a workspace (its checkout, or the worktree of a branch) or a session's or job's worktree
 * or working directory, and nowhere else. Uploads and downloads travel over plain HTTP
 * (`/api/files/upload`, `/api/files/download`). The models, errors and the `Files` RPC group.
 */
import { Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import { AuthMiddleware } from "./Auth.js"
import { GitTarget } from "./Git.js"
import { WorkspaceError } from "./Workspaces.js"

/** A path relative to the target's root, `/`-separated; empty is the root. */
const FilePath = Schema.String.pipe(Schema.maxLength(4096))

/** What a directory entry is. Symbolic links are listed, never followed. */
export const FileType = Schema.Literal("file", "directory", "symlink", "other")
export type FileType = typeof FileType.Type

/** A file or directory. */
export class FileEntry extends Schema.Class<FileEntry>("FileEntry")({
  name: Schema.String,
  /** Relative to the root. */
  path: Schema.String,
  type: FileType,
  size: Schema.Number,
  modifiedAt: Schema.DateTimeUtc,
  /** Permission bits (`0o644`). */
  mode: Schema.Int
}) {}

/** A page of a directory, sorted by name. */
export class DirectoryPage extends Schema.Class<DirectoryPage>("DirectoryPage")({
  path: Schema.String,
  entries: Schema.Array(FileEntry),
  /** Entries in all (the page holds `entries` from `offset`). */
  total: Schema.Int,
  offset: Schema.Int
}) {}

/** Bytes of a file, from `offset`. */
export class FileChunk extends Schema.Class<FileChunk>("FileChunk")({
  offset: Schema.Number,
  data: Schema.Uint8ArrayFromSelf
}) {}

/** The largest upload accepted, in bytes. */
export const maxUploadBytes = 2 * 1024 * 1024 * 1024

// Errors ------------------------------------------------------------------------------------

/**
 * The path is not allowed: absolute, with a `..` segment, a NUL, a backslash or a percent-encoded
 * byte, a symbolic link (never followed at the end of a path), or leading outside the root.
 */
export class PathRefused extends Schema.TaggedError<PathRefused>()("PathRefused", {
  path: Schema.String,
  reason: Schema.Literal("absolute", "parent", "nul", "encoded", "backslash", "outside", "symlink"),
  message: Schema.String
}) {}

/** Nothing at that path. */
export class FileNotFound extends Schema.TaggedError<FileNotFound>()("FileNotFound", {
  path: Schema.String,
  message: Schema.String
}) {}

/** Something is at that path already. */
export class FileExists extends Schema.TaggedError<FileExists>()("FileExists", {
  path: Schema.String,
  message: Schema.String
}) {}

/** The request does not fit what is there (a directory to read, a file to list, …). */
export class InvalidFileRequest extends Schema.TaggedError<InvalidFileRequest>()("InvalidFileRequest", {
  field: Schema.String,
  message: Schema.String
}) {}

/** An upload over the limit; nothing was written. */
export class FileTooLarge extends Schema.TaggedError<FileTooLarge>()("FileTooLarge", {
  limit: Schema.Number,
  message: Schema.String
}) {}

/** The file system failed for another reason (its message says how); retry or look. */
export class FilesUnavailable extends Schema.TaggedError<FilesUnavailable>()("FilesUnavailable", {
  message: Schema.String
}) {}

/** Every error a file call can fail with. */
export const FilesError = Schema.Union(
  PathRefused,
  FileNotFound,
  FileExists,
  InvalidFileRequest,
  FileTooLarge,
  FilesUnavailable,
  WorkspaceError
)
export type FilesError = typeof FilesError.Type

// RPCs --------------------------------------------------------------------------------------

/** `List`: a directory's entries, sorted by name, paged. */
export class ListFiles extends Schema.Class<ListFiles>("ListFiles")({
  ...GitTarget,
  path: Schema.optionalWith(FilePath, { default: () => "" }),
  offset: Schema.optionalWith(Schema.NonNegativeInt, { default: () => 0 }),
  limit: Schema.optionalWith(Schema.Int.pipe(Schema.between(1, 1000)), { default: () => 200 })
}) {}

/** `Read`: a file's bytes from `offset`, `length` of them (default: to the end), in chunks. */
export class ReadFile extends Schema.Class<ReadFile>("ReadFile")({
  ...GitTarget,
  path: FilePath,
  offset: Schema.optionalWith(Schema.NonNegativeInt, { default: () => 0 }),
  length: Schema.optional(Schema.NonNegativeInt)
}) {}

/** `Mkdir`: a new directory (with `parents`, the missing ones above it too). */
export class MakeDirectory extends Schema.Class<MakeDirectory>("MakeDirectory")({
  ...GitTarget,
  path: FilePath,
  parents: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** `Rename`: moves `from` to `to` within the root; an existing `to` only with `overwrite`. */
export class RenameFile extends Schema.Class<RenameFile>("RenameFile")({
  ...GitTarget,
  from: FilePath,
  to: FilePath,
  overwrite: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** `Delete`: a file, a symbolic link, an empty directory, or with `recursive` any directory. */
export class DeleteFile extends Schema.Class<DeleteFile>("DeleteFile")({
  ...GitTarget,
  path: FilePath,
  /** Symbolic links inside are removed, never followed. */
  recursive: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

/** The `Files` RPC group, at `/rpc`. */
export class FilesRpcs extends RpcGroup.make(
  Rpc.make("List", { payload: ListFiles, success: DirectoryPage, error: FilesError }),
  Rpc.make("Stat", { payload: { ...GitTarget, path: FilePath }, success: FileEntry, error: FilesError }),
  Rpc.make("Read", { payload: ReadFile, success: FileChunk, error: FilesError, stream: true }),
  Rpc.make("Mkdir", { payload: MakeDirectory, success: FileEntry, error: FilesError }),
  Rpc.make("Rename", { payload: RenameFile, success: FileEntry, error: FilesError }),
  Rpc.make("Delete", { payload: DeleteFile, error: FilesError })
)
  .prefix("Files.")
  .middleware(AuthMiddleware) {}
