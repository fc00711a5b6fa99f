/**
 * File commands of the CLI, on the server's file service: `vibes files ls|cat|get|put|mkdir|mv|rm`
 * in a workspace (`--workspace W [--branch B]`) or a session's or job's worktree or directory.
 * `get` and `put` stream over HTTP (`/api/files/download`, `/api/files/upload`).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Readable } from "node:stream"
import { pipeline } from "node:stream/promises"
import { DateTime, Effect, Option, Redacted, Stream } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { DeleteFile, ListFiles, MakeDirectory, ReadFile, RenameFile } from "../../rpc/Files.js"
import {
  CliFailure,
  type Connection,
  connectionOptions,
  resolveConnection,
  withClient
} from "./Connection.js"
import { printable } from "./Display.js"
import { target } from "./GitCommands.js"
import { formatTable } from "./SessionCommands.js"

type TargetFlags = {
  readonly workspace: Option.Option<string>
  readonly branch: Option.Option<string>
  readonly session: Option.Option<string>
  readonly job: Option.Option<string>
}

const targetOf = (flags: TargetFlags) => ({
  ...(Option.isSome(flags.workspace) ? { workspace: flags.workspace.value } : {}),
  ...(Option.isSome(flags.branch) ? { branch: flags.branch.value } : {}),
  ...(Option.isSome(flags.session) ? { session: flags.session.value } : {}),
  ...(Option.isSome(flags.job) ? { job: flags.job.value } : {})
})

const remotePath = (name: string) =>
  Args.text({ name }).pipe(Args.withDescription("A path relative to the root"))

/** An HTTP call to the files API, failing with the server's message. */
const http = (
  connection: Connection,
  flags: TargetFlags,
  route: string,
  query: Record<string, string>,
  init: RequestInit
) =>
  Effect.tryPromise({
    try: async () => {
      const params = new URLSearchParams({ ...targetOf(flags), ...query })
      const response = await fetch(`${connection.url.replace(/\/+$/, "")}${route}?${params}`, {
        ...init,
        headers: {
          ...(Option.isSome(connection.token)
            ? { authorization: `Bearer ${Redacted.value(connection.token.value)}` }
            : {}),
          ...init.headers
        }
      })
      if (!response.ok) {
        const body = (await response.json().catch(() => ({}))) as { message?: string }
        throw new CliFailure({
          message: body.message ?? `${connection.url} answered ${response.status}`,
          exitCode: response.status === 401 ? 3 : response.status === 400 ? 2 : 1
        })
      }
      return response
    },
    catch: (error) =>
      error instanceof CliFailure
        ? error
        : new CliFailure({
            message: `cannot reach vibes at ${connection.url}: ${String(error)}`,
            exitCode: 1
          })
  })

const ls = Command.make(
  "ls",
  {
    ...connectionOptions,
    ...target,
    offset: Options.integer("offset").pipe(
      Options.withDescription("Skip this many entries"),
      Options.withDefault(0)
    ),
    limit: Options.integer("limit").pipe(
      Options.withDescription("Entries to show (1-1000)"),
      Options.withDefault(200)
    ),
    path: remotePath("path").pipe(Args.withDefault(""))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const page = yield* withClient(connection, flags.timeout, (client) =>
        client.Files.List(
          ListFiles.make({ ...targetOf(flags), path: flags.path, offset: flags.offset, limit: flags.limit })
        )
      )
      const rows = page.entries.map((entry) => [
        entry.type,
        entry.type === "directory" ? "-" : String(entry.size),
        DateTime.formatIso(entry.modifiedAt).slice(0, 19),
        printable(entry.name)
      ])
      for (const line of formatTable(["TYPE", "SIZE", "MODIFIED", "NAME"], rows)) console.log(line)
      const shown = page.offset + page.entries.length
      if (shown < page.total) console.log(`[vibes: ${page.total - shown} more: --offset ${shown}]`)
    })
).pipe(Command.withDescription("List a directory, sorted by name, a page at a time."))

const cat = Command.make("cat", { ...connectionOptions, ...target, path: remotePath("path") }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    yield* withClient(connection, flags.timeout, (client) =>
      client.Files.Read(ReadFile.make({ ...targetOf(flags), path: flags.path })).pipe(
        Stream.runForEach((chunk) =>
          Effect.async<void>((resume) => {
            process.stdout.write(chunk.data, () => resume(Effect.void))
          })
        )
      )
    )
  })
).pipe(Command.withDescription("Write a file's bytes to stdout, as they are."))

const get = Command.make(
  "get",
  {
    ...connectionOptions,
    ...target,
    output: Options.text("output").pipe(
      Options.withAlias("o"),
      Options.withDescription("Where to write it. Default: its name, in this directory"),
      Options.optional
    ),
    path: remotePath("path")
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const response = yield* http(connection, flags, "/api/files/download", { path: flags.path }, {})
      const output = Option.getOrElse(flags.output, () => path.basename(flags.path))
      yield* Effect.tryPromise({
        try: () =>
          pipeline(
            Readable.fromWeb(response.body as import("node:stream/web").ReadableStream<Uint8Array>),
            fs.createWriteStream(output, { flags: "wx" })
          ),
        catch: (error) => new CliFailure({ message: `cannot write ${output}: ${String(error)}`, exitCode: 1 })
      })
    })
).pipe(Command.withDescription("Download a file (streamed) into a new local file."))

const put = Command.make(
  "put",
  {
    ...connectionOptions,
    ...target,
    overwrite: Options.boolean("overwrite").pipe(Options.withDescription("Replace a file that is there")),
    local: Args.text({ name: "local-file" }).pipe(Args.withDescription("The local file to upload")),
    path: remotePath("path")
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const size = yield* Effect.try({
        try: () => fs.statSync(flags.local).size,
        catch: () => new CliFailure({ message: `cannot read ${flags.local}`, exitCode: 2 })
      })
      const response = yield* http(
        connection,
        flags,
        "/api/files/upload",
        { path: flags.path, ...(flags.overwrite ? { overwrite: "1" } : {}) },
        {
          method: "PUT",
          headers: { "content-length": String(size) },
          body: Readable.toWeb(fs.createReadStream(flags.local)) as unknown as BodyInit,
          duplex: "half"
        } as RequestInit
      )
      const answer = (yield* Effect.promise(() => response.json())) as { readonly sha256?: string }
      console.log(`${answer.sha256 ?? ""}  ${printable(flags.path)}`)
    })
).pipe(Command.withDescription("Upload a local file (streamed); prints the SHA-256 the server wrote."))

const mkdir = Command.make(
  "mkdir",
  {
    ...connectionOptions,
    ...target,
    parents: Options.boolean("parents").pipe(
      Options.withAlias("p"),
      Options.withDescription("Make missing parents")
    ),
    path: remotePath("path")
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      yield* withClient(connection, flags.timeout, (client) =>
        client.Files.Mkdir(
          MakeDirectory.make({ ...targetOf(flags), path: flags.path, parents: flags.parents })
        )
      )
    })
).pipe(Command.withDescription("Make a directory."))

const mv = Command.make(
  "mv",
  {
    ...connectionOptions,
    ...target,
    overwrite: Options.boolean("overwrite").pipe(
      Options.withDescription("Replace what is at the destination")
    ),
    from: remotePath("from"),
    to: remotePath("to")
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      yield* withClient(connection, flags.timeout, (client) =>
        client.Files.Rename(
          RenameFile.make({ ...targetOf(flags), from: flags.from, to: flags.to, overwrite: flags.overwrite })
        )
      )
    })
).pipe(Command.withDescription("Rename or move a file or directory within the root."))

const rm = Command.make(
  "rm",
  {
    ...connectionOptions,
    ...target,
    recursive: Options.boolean("recursive").pipe(
      Options.withAlias("r"),
      Options.withDescription("Delete a directory with what it holds")
    ),
    path: remotePath("path")
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      yield* withClient(connection, flags.timeout, (client) =>
        client.Files.Delete(
          DeleteFile.make({ ...targetOf(flags), path: flags.path, recursive: flags.recursive })
        )
      )
    })
).pipe(Command.withDescription("Delete a file, a link or a directory (-r for one that is not empty)."))

/** `vibes files ls|cat|get|put|mkdir|mv|rm`. */
export const command = Command.make("files").pipe(
  Command.withDescription(
    "Files of a workspace or a session's worktree, confined to it: `vibes files ls|cat|get|put|mkdir|mv|rm`."
  ),
  Command.withSubcommands([ls, cat, get, put, mkdir, mv, rm])
)
