/**
 * Git commands of the CLI, on the server's git service: `vibes git status|branches|log|diff`, for
 * a workspace (`--workspace W [--branch B]`) or a session's or job's worktree (`--session`, `--job`).
 */
import { DateTime, Effect, Option, Schema } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import {
  BranchInfo,
  CheckedOut,
  CheckoutRequest,
  CommitInfo,
  CommitMade,
  CommitRequest,
  DiffPage,
  DiffRequest,
  GitStatus,
  LogRequest
} from "../../rpc/Git.js"
import { connectionOptions, resolveConnection, withClient } from "./Connection.js"
import { json as toJson, printable, printableLines } from "./Display.js"
import { formatTable } from "./SessionCommands.js"

/** Where a git or file command works: a workspace (or one of its worktrees), a session's or a job's. */
export const target = {
  workspace: Options.text("workspace").pipe(Options.withDescription("The workspace"), Options.optional),
  branch: Options.text("branch").pipe(
    Options.withDescription("With --workspace: the worktree that has this branch checked out"),
    Options.optional
  ),
  session: Options.text("session").pipe(
    Options.withDescription("The worktree (or directory) of this session"),
    Options.optional
  ),
  job: Options.text("job").pipe(Options.withDescription("The worktree of this job"), Options.optional)
}

const json = Options.boolean("json").pipe(Options.withDescription("Print JSON"))

const targetOf = (flags: {
  readonly workspace: Option.Option<string>
  readonly branch: Option.Option<string>
  readonly session: Option.Option<string>
  readonly job: Option.Option<string>
}) => ({
  ...(Option.isSome(flags.workspace) ? { workspace: flags.workspace.value } : {}),
  ...(Option.isSome(flags.branch) ? { branch: flags.branch.value } : {}),
  ...(Option.isSome(flags.session) ? { session: flags.session.value } : {}),
  ...(Option.isSome(flags.job) ? { job: flags.job.value } : {})
})

const status = Command.make("status", { ...connectionOptions, ...target, json }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    const result = yield* withClient(connection, flags.timeout, (client) =>
      client.Git.Status({ ...targetOf(flags), offset: 0, limit: 10_000 })
    )
    if (flags.json) return console.log(toJson(Schema.encodeSync(GitStatus)(result)))
    const where = result.branch === null ? `HEAD detached at ${result.head ?? "?"}` : `on ${result.branch}`
    const tracking =
      result.upstream === null ? "" : ` (${result.upstream}: ${result.ahead} ahead, ${result.behind} behind)`
    console.log(printable(`${result.path}: ${where}${tracking}`))
    for (const entry of result.entries) {
      const name = entry.origPath === null ? entry.path : `${entry.origPath} -> ${entry.path}`
      console.log(`${entry.index}${entry.worktree} ${printable(name)}`)
    }
    if (result.total > result.entries.length) console.log(`… ${result.total - result.entries.length} more`)
  })
).pipe(Command.withDescription("What changed in a worktree: `XY path` as git status --short prints it."))

const branches = Command.make("branches", { ...connectionOptions, ...target, json }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    const result = yield* withClient(connection, flags.timeout, (client) =>
      client.Git.Branches({ ...targetOf(flags), offset: 0, limit: 10_000 })
    )
    if (flags.json) {
      for (const branch of result) console.log(toJson(Schema.encodeSync(BranchInfo)(branch)))
      return
    }
    const rows = result.map((branch) => [
      printable(branch.name),
      branch.commit.slice(0, 12),
      DateTime.formatIso(branch.committedAt).slice(0, 19),
      branch.sessionId ?? branch.jobId ?? "-",
      printable(branch.worktree ?? "-"),
      printable(branch.subject)
    ])
    for (const line of formatTable(["BRANCH", "COMMIT", "COMMITTED", "BY", "WORKTREE", "SUBJECT"], rows)) {
      console.log(line)
    }
  })
).pipe(Command.withDescription("The repository's branches, with the worktree and session or job of each."))

const log = Command.make(
  "log",
  {
    ...connectionOptions,
    ...target,
    json,
    ref: Options.text("ref").pipe(Options.withDescription("Where to start. Default: HEAD"), Options.optional),
    limit: Options.integer("limit").pipe(
      Options.withDescription("Commits to show (1-1000)"),
      Options.withDefault(20)
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const result = yield* withClient(connection, flags.timeout, (client) =>
        client.Git.Log(
          LogRequest.make({
            ...targetOf(flags),
            ...(Option.isSome(flags.ref) ? { ref: flags.ref.value } : {}),
            limit: flags.limit
          })
        )
      )
      for (const commit of result) {
        console.log(
          flags.json
            ? toJson(Schema.encodeSync(CommitInfo)(commit))
            : printable(
                `${commit.commit.slice(0, 12)} ${DateTime.formatIso(commit.authoredAt).slice(0, 10)} ${commit.author}: ${commit.subject}`
              )
        )
      }
    })
).pipe(Command.withDescription("Commits, newest first."))

const diff = Command.make(
  "diff",
  {
    ...connectionOptions,
    ...target,
    json,
    against: Options.choice("against", ["head", "base"]).pipe(
      Options.withDescription(
        "head: the working tree against HEAD; base: the branch against where it left --base"
      ),
      Options.withDefault("head" as const)
    ),
    base: Options.text("base").pipe(
      Options.withDescription("With --against base: the base. Default: the workspace's default branch"),
      Options.optional
    ),
    stat: Options.boolean("stat").pipe(
      Options.withDescription("Lines added and deleted per file, no patches")
    ),
    offset: Options.integer("offset").pipe(
      Options.withDescription("Skip this many files"),
      Options.withDefault(0)
    ),
    limit: Options.integer("limit").pipe(
      Options.withDescription("Files to show (1-1000)"),
      Options.withDefault(100)
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const page = yield* withClient(connection, flags.timeout, (client) =>
        client.Git.Diff(
          DiffRequest.make({
            ...targetOf(flags),
            against: flags.against,
            ...(Option.isSome(flags.base) ? { base: flags.base.value } : {}),
            offset: flags.offset,
            limit: flags.limit
          })
        )
      )
      if (flags.json) return console.log(toJson(Schema.encodeSync(DiffPage)(page)))
      for (const file of page.files) {
        const name = printable(file.oldPath === null ? file.path : `${file.oldPath} => ${file.path}`)
        if (flags.stat || file.patch === null) {
          const mark = file.untracked ? "\t(untracked)" : ""
          console.log(
            file.binary
              ? `binary\t${name}${mark}`
              : file.added === null
                ? `+?\t-?\t${name}${mark} (too large to show)`
                : `+${file.added}\t-${file.deleted ?? 0}\t${name}${mark}`
          )
        } else {
          process.stdout.write(printableLines(file.patch.replace(/\n$/, "")) + "\n")
          if (file.truncated) console.log(`[vibes: the patch of ${name} is cut here]`)
        }
      }
      const shown = page.offset + page.files.length
      if (shown < page.total) console.log(`[vibes: ${page.total - shown} more files: --offset ${shown}]`)
    })
).pipe(
  Command.withDescription("What changed: the working tree against HEAD, or the branch against its base.")
)

const commit = Command.make(
  "commit",
  {
    ...connectionOptions,
    ...target,
    json,
    message: Options.text("message").pipe(
      Options.withAlias("m"),
      Options.withDescription("The commit message")
    ),
    all: Options.boolean("all").pipe(
      Options.withAlias("a"),
      Options.withDescription("Stage every change first: new, changed and deleted files (git add --all)")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const made = yield* withClient(connection, flags.timeout, (client) =>
        client.Git.Commit(CommitRequest.make({ ...targetOf(flags), message: flags.message, all: flags.all }))
      )
      if (flags.json) return console.log(toJson(Schema.encodeSync(CommitMade)(made)))
      console.log(
        printable(
          `[${made.branch ?? "detached HEAD"} ${made.commit.commit.slice(0, 12)}] ${made.commit.subject}`
        )
      )
    })
).pipe(
  Command.withDescription(
    "Commit what is staged in a worktree (--all: every change). Refused with unmerged paths or nothing to commit."
  )
)

const checkout = Command.make(
  "checkout",
  {
    ...connectionOptions,
    ...target,
    json,
    create: Options.boolean("create").pipe(
      Options.withAlias("c"),
      Options.withDescription("Create the branch")
    ),
    from: Options.text("from").pipe(
      Options.withDescription("With --create: where the new branch starts. Default: HEAD"),
      Options.optional
    ),
    to: Args.text({ name: "BRANCH" }).pipe(Args.withDescription("The branch to switch to"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const done = yield* withClient(connection, flags.timeout, (client) =>
        client.Git.Checkout(
          CheckoutRequest.make({
            ...targetOf(flags),
            to: flags.to,
            create: flags.create,
            ...(Option.isSome(flags.from) ? { from: flags.from.value } : {})
          })
        )
      )
      if (flags.json) return console.log(toJson(Schema.encodeSync(CheckedOut)(done)))
      console.log(
        printable(
          `${done.path}: on ${done.created ? "new branch " : ""}${done.branch} at ${done.commit.slice(0, 12)}`
        )
      )
    })
).pipe(
  Command.withDescription(
    "Switch a checkout to a branch. Refused with uncommitted changes to tracked files, unmerged paths, a branch checked out elsewhere, or in a worktree vibes made for a session or job."
  )
)

/** `vibes git status|branches|log|diff|commit|checkout`. */
export const command = Command.make("git").pipe(
  Command.withDescription(
    "The git service: `vibes git status|branches|log|diff|commit|checkout` of a workspace or a session's worktree."
  ),
  Command.withSubcommands([status, branches, log, diff, commit, checkout])
)
