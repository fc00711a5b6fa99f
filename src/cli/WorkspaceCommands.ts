/**
 * Workspace commands of the CLI: `vibes workspace add PATH [--name N]`, `vibes workspace ls`,
 * `vibes workspace rm NAME [--force]`, `vibes workspace follow NAME --branch B`, `vibes workspace unfollow NAME`.
 */
import * as path from "node:path"
import { DateTime, Effect, Option, Schema } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { AddWorkspace, FollowBranch, RemoveWorkspace, WorkspaceInfo } from "../../rpc/Workspaces.js"
import { connectionOptions, resolveConnection, withClient } from "./Connection.js"
import { json as toJson, printable } from "./Display.js"
import { formatTable } from "./SessionCommands.js"

const json = Options.boolean("json").pipe(Options.withDescription("Print JSON"))

const encodeInfo = Schema.encodeSync(WorkspaceInfo)

const add = Command.make(
  "add",
  {
    ...connectionOptions,
    name: Options.text("name").pipe(
      Options.withDescription("The workspace's name. Default: the repository directory's name"),
      Options.optional
    ),
    defaultBranch: Options.text("default-branch").pipe(
      Options.withDescription("The branch new branches start from. Default: the branch checked out"),
      Options.optional
    ),
    worktreesDir: Options.text("worktrees-dir").pipe(
      Options.withDescription("Where the worktrees of sessions and jobs go. Default: <repository>.worktrees"),
      Options.optional
    ),
    closePolicy: Options.choice("on-close", ["keep", "remove-when-clean", "remove-always"]).pipe(
      Options.withDescription(
        "What happens to a session's or job's worktree when it ends (uncommitted work is never removed without force)"
      ),
      Options.withDefault("keep" as const)
    ),
    json,
    path: Args.text({ name: "path" }).pipe(
      Args.withDescription("The repository (a directory inside it is enough); relative to this directory")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const info = yield* withClient(connection, flags.timeout, (client) =>
        client.Workspaces.Add(
          AddWorkspace.make({
            path: path.resolve(flags.path),
            ...(Option.isSome(flags.name) ? { name: flags.name.value } : {}),
            ...(Option.isSome(flags.defaultBranch) ? { defaultBranch: flags.defaultBranch.value } : {}),
            ...(Option.isSome(flags.worktreesDir)
              ? { worktreesDir: path.resolve(flags.worktreesDir.value) }
              : {}),
            closePolicy: flags.closePolicy
          })
        )
      )
      console.log(flags.json ? toJson(encodeInfo(info)) : printable(info.name))
    })
).pipe(
  Command.withDescription("Register a git repository as a workspace: `vibes workspace add PATH [--name N]`.")
)

/** `branch (following)` or `branch (blocked: dirty)`, or `-`. */
const followText = (info: WorkspaceInfo) =>
  info.follow === null
    ? "-"
    : printable(
        `${info.follow.branch} (${info.follow.state === "following" ? "following" : `blocked: ${info.follow.reason ?? "?"}`})`
      )

const ls = Command.make("ls", { ...connectionOptions, json }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    const workspaces = yield* withClient(connection, flags.timeout, (client) => client.Workspaces.List())
    if (flags.json) {
      for (const info of workspaces) console.log(toJson(encodeInfo(info)))
      return
    }
    if (workspaces.length === 0) {
      console.log("no workspaces")
      return
    }
    const rows = workspaces.map((info) => [
      printable(info.name),
      printable(info.defaultBranch),
      info.closePolicy,
      DateTime.formatIso(info.createdAt).slice(0, 19),
      followText(info),
      printable(info.path)
    ])
    for (const line of formatTable(["NAME", "DEFAULT BRANCH", "ON CLOSE", "ADDED", "FOLLOWS", "PATH"], rows))
      console.log(line)
    for (const info of workspaces) {
      if (info.follow?.state === "blocked" && info.follow.message !== null)
        console.log(printable(`${info.name}: ${info.follow.message}`))
    }
  })
).pipe(Command.withDescription("List the workspaces."))

const rm = Command.make(
  "rm",
  {
    ...connectionOptions,
    force: Options.boolean("force").pipe(
      Options.withDescription(
        "Also remove worktrees in use or with uncommitted changes (those changes are lost)"
      )
    ),
    name: Args.text({ name: "name" }).pipe(Args.withDescription("The workspace's name"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      yield* withClient(connection, flags.timeout, (client) =>
        client.Workspaces.Remove(RemoveWorkspace.make({ workspace: flags.name, force: flags.force }))
      )
    })
).pipe(
  Command.withDescription(
    "Unregister a workspace and remove the worktrees vibes made in it. The repository and its branches stay."
  )
)

const follow = Command.make(
  "follow",
  {
    ...connectionOptions,
    json,
    branch: Options.text("branch").pipe(Options.withDescription("The branch to follow (an agent's, say)")),
    name: Args.text({ name: "name" }).pipe(Args.withDescription("The workspace's name"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const info = yield* withClient(connection, flags.timeout, (client) =>
        client.Workspaces.Follow(FollowBranch.make({ workspace: flags.name, branch: flags.branch }))
      )
      if (flags.json) return console.log(toJson(encodeInfo(info)))
      console.log(
        info.follow?.state === "blocked"
          ? printable(`${info.name} follows ${flags.branch}, blocked: ${info.follow.message ?? "?"}`)
          : printable(
              `${info.path} follows ${flags.branch}, at ${(info.follow?.commit ?? "?").slice(0, 12)} (detached HEAD)`
            )
      )
    })
).pipe(
  Command.withDescription(
    "Keep the workspace's main checkout following a branch: each new commit of it is checked out there (detached), never forced; a dirty or moved main checkout is reported and left alone."
  )
)

const unfollow = Command.make(
  "unfollow",
  {
    ...connectionOptions,
    json,
    name: Args.text({ name: "name" }).pipe(Args.withDescription("The workspace's name"))
  },
  (flags) =>
    Effect.gen(function* () {
      const connection = yield* resolveConnection(flags)
      const before = yield* withClient(connection, flags.timeout, (client) =>
        client.Workspaces.Unfollow({ workspace: flags.name })
      )
      if (flags.json) return console.log(toJson(encodeInfo(before)))
      console.log(printable(`${before.name} follows no branch`))
    })
).pipe(
  Command.withDescription(
    "Stop following; the main checkout goes back to the branch it was on when it is clean and unmoved."
  )
)

/** `vibes workspace add|ls|rm|follow|unfollow`. */
export const command = Command.make("workspace").pipe(
  Command.withDescription(
    "Git repositories sessions and jobs work in: `vibes workspace add|ls|rm|follow|unfollow`."
  ),
  Command.withSubcommands([add, ls, rm, follow, unfollow])
)
