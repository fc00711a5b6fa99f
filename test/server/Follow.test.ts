import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import { CheckoutRequest, CommitRequest } from "../../rpc/Git.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { AddWorkspace, FollowBranch } from "../../rpc/Workspaces.js"
import { clientLayer, eventually } from "../support/Attach.js"
import { git, giveToPrograms, makeRepo } from "../support/GitRepo.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.start)

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const vibes = (args: ReadonlyArray<string>) =>
  Effect.flatMap(Node, (server) =>
    Vibes.run(args, Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }))
  )

let counter = 0
const uniqueName = (base: string) => `${base}-${process.pid}-${++counter}`

/** A workspace with a session working on branch `agent` in its worktree. */
const agentAt = (rpc: Client.Client) =>
  Effect.gen(function* () {
    const repo = yield* makeRepo({ "README.md": "hello\n", "app.txt": "v1\n" })
    const info = yield* rpc.Workspaces.Add(AddWorkspace.make({ path: repo.path, name: uniqueName("follow") }))
    const session = yield* rpc.Sessions.Create(
      CreateSession.make({ workspace: info.name, branch: "agent", command: "sleep", args: ["600"] })
    )
    return { repo, info, session, worktree: path.join(info.worktreesDir, "agent") }
  })

/** Writes a file as the programs' account would. */
const write = (dir: string, name: string, content: string) => {
  fs.writeFileSync(path.join(dir, name), content)
  giveToPrograms(dir)
}

/** The first event of `type` after offset `after`. */
const nextEvent = (rpc: Client.Client, after: number, type: string, workspace: string) =>
  rpc.Events.Subscribe({
    from: { _tag: "Offset", offset: after + 1 },
    filter: EventFilter.make({ types: [type] })
  }).pipe(
    Stream.filter((event) => (event.data as { workspace?: string }).workspace === workspace),
    Stream.take(1),
    Stream.runHead,
    Effect.flatMap((event: Option.Option<StoredEvent>) => event),
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error(`no ${type} event came`) })
  )

layer(NodeLive, { timeout: 180_000, excludeTestServices: true })("follow mode", (it) => {
  it.scoped(
    "the main checkout follows an agent's branch; a dirty main checkout is reported and left alone",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { repo, info, session, worktree } = yield* agentAt(rpc)
        const start = git(repo.path, "rev-parse", "HEAD")

        const followed = yield* rpc.Workspaces.Follow(
          FollowBranch.make({ workspace: info.name, branch: "agent" })
        )
        expect(followed.follow).toMatchObject({
          branch: "agent",
          state: "following",
          commit: start,
          restore: "main"
        })

        // A commit of the agent shows up in the main checkout.
        let head = (yield* rpc.Events.Head()).head
        write(worktree, "app.txt", "v2\n")
        const first = yield* rpc.Git.Commit(
          CommitRequest.make({ session: session.id, message: "v2", all: true })
        )
        const synced = yield* nextEvent(rpc, head, "workspace.follow_synced", info.name)
        expect(synced.data).toMatchObject({ branch: "agent", to: first.commit.commit })
        expect(git(repo.path, "rev-parse", "HEAD")).toBe(first.commit.commit)
        expect(fs.readFileSync(path.join(repo.path, "app.txt"), "utf8")).toBe("v2\n")
        expect(git(repo.path, "status", "--porcelain")).toBe("")

        // A person edits the main checkout: the next commit is reported, not forced.
        write(repo.path, "README.md", "my local edit\n")
        head = (yield* rpc.Events.Head()).head
        write(worktree, "app.txt", "v3\n")
        const second = yield* rpc.Git.Commit(
          CommitRequest.make({ session: session.id, message: "v3", all: true })
        )
        const blocked = yield* nextEvent(rpc, head, "workspace.follow_blocked", info.name)
        expect(blocked.data).toMatchObject({ branch: "agent", reason: "dirty", commit: second.commit.commit })
        expect(git(repo.path, "rev-parse", "HEAD")).toBe(first.commit.commit)
        expect(fs.readFileSync(path.join(repo.path, "README.md"), "utf8")).toBe("my local edit\n")
        expect(fs.readFileSync(path.join(repo.path, "app.txt"), "utf8")).toBe("v2\n")
        const state = yield* rpc.Workspaces.Get({ workspace: info.name })
        expect(state.follow).toMatchObject({ state: "blocked", reason: "dirty", commit: first.commit.commit })
        const listed = yield* vibes(["workspace", "ls"])
        expect(listed.stdout).toMatch(new RegExp(`^${info.name}\\s.*\\sagent \\(blocked: dirty\\)\\s`, "m"))
        expect(listed.stdout).toContain(`${info.name}: the main checkout has uncommitted changes`)
        const checkout = yield* Effect.flip(
          rpc.Git.Checkout(CheckoutRequest.make({ workspace: info.name, to: "main" }))
        )
        expect(checkout).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "to" })

        // Once the edit is gone, following resumes by itself.
        git(repo.path, "checkout", "-q", "--", "README.md")
        giveToPrograms(repo.root)
        const resumed = yield* eventually(
          Effect.map(rpc.Workspaces.Get({ workspace: info.name }), (got) =>
            got.follow?.state === "following" && got.follow.commit === second.commit.commit
              ? Option.some(got)
              : Option.none()
          ),
          "following to resume"
        )
        expect(resumed.follow?.reason).toBeNull()
        expect(git(repo.path, "rev-parse", "HEAD")).toBe(second.commit.commit)
        expect(fs.readFileSync(path.join(repo.path, "app.txt"), "utf8")).toBe("v3\n")

        // Unfollowing puts the main checkout back on its branch.
        head = (yield* rpc.Events.Head()).head
        const unfollowed = yield* rpc.Workspaces.Unfollow({ workspace: info.name })
        expect(unfollowed.follow).toBeNull()
        expect(git(repo.path, "symbolic-ref", "--short", "HEAD")).toBe("main")
        expect(git(repo.path, "rev-parse", "HEAD")).toBe(start)
        const stopped = yield* nextEvent(rpc, head, "workspace.follow_stopped", info.name)
        expect(stopped.data).toMatchObject({ branch: "agent", restored: "main" })
        yield* rpc.Sessions.Close({ sessionId: session.id })
      }),
    // Several CLI runs (a Node start each): slow on a loaded machine.
    180_000
  )

  it.scoped("a main checkout moved by hand is reported as diverged and not moved back", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const { repo, info, session, worktree } = yield* agentAt(rpc)
      yield* rpc.Workspaces.Follow(FollowBranch.make({ workspace: info.name, branch: "agent" }))
      // Someone commits on the detached HEAD of the main checkout.
      write(repo.path, "mine.txt", "mine\n")
      git(repo.path, "add", "mine.txt")
      git(repo.path, "commit", "-q", "-m", "mine")
      giveToPrograms(repo.root)
      const mine = git(repo.path, "rev-parse", "HEAD")
      const head = (yield* rpc.Events.Head()).head
      write(worktree, "app.txt", "agent\n")
      yield* rpc.Git.Commit(CommitRequest.make({ session: session.id, message: "agent", all: true }))
      const blocked = yield* nextEvent(rpc, head, "workspace.follow_blocked", info.name)
      expect(blocked.data).toMatchObject({ reason: "diverged" })
      expect(git(repo.path, "rev-parse", "HEAD")).toBe(mine)
      // Unfollowing leaves a moved main checkout where it is.
      const unfollowed = yield* rpc.Workspaces.Unfollow({ workspace: info.name })
      expect(unfollowed.follow).toBeNull()
      expect(git(repo.path, "rev-parse", "HEAD")).toBe(mine)
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped(
    "following is refused with a dirty main checkout, an unknown branch or its own branch; vibes workspace follow",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { repo, info, session } = yield* agentAt(rpc)
        const unknown = yield* Effect.flip(
          rpc.Workspaces.Follow(FollowBranch.make({ workspace: info.name, branch: "nope" }))
        )
        expect(unknown).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "branch" })
        const own = yield* Effect.flip(
          rpc.Workspaces.Follow(FollowBranch.make({ workspace: info.name, branch: "main" }))
        )
        expect(own).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "branch" })
        const bad = yield* Effect.flip(
          rpc.Workspaces.Follow(FollowBranch.make({ workspace: info.name, branch: "-x" }))
        )
        expect(bad._tag).toBe("InvalidBranchName")
        const notFollowing = yield* Effect.flip(rpc.Workspaces.Unfollow({ workspace: info.name }))
        expect(notFollowing).toMatchObject({ _tag: "InvalidWorkspaceRequest" })

        write(repo.path, "README.md", "edited\n")
        const dirty = yield* vibes(["workspace", "follow", "--branch", "agent", info.name])
        expect(dirty.code).toBe(1)
        expect(dirty.stderr).toContain("uncommitted changes")
        expect((yield* rpc.Workspaces.Get({ workspace: info.name })).follow).toBeNull()
        expect(git(repo.path, "symbolic-ref", "--short", "HEAD")).toBe("main")

        git(repo.path, "checkout", "-q", "--", "README.md")
        giveToPrograms(repo.root)
        const ok = yield* vibes(["workspace", "follow", "--branch", "agent", info.name])
        expect(ok.code).toBe(0)
        expect(ok.stdout).toContain(`${repo.path} follows agent`)
        const listed = yield* vibes(["workspace", "ls"])
        expect(listed.stdout).toMatch(new RegExp(`^${info.name}\\s.*\\sagent \\(following\\)\\s`, "m"))
        const stopped = yield* vibes(["workspace", "unfollow", info.name])
        expect(stopped.code).toBe(0)
        expect(git(repo.path, "symbolic-ref", "--short", "HEAD")).toBe("main")
        yield* rpc.Sessions.Close({ sessionId: session.id })
      }),
    // Several CLI runs (a Node start each): slow on a loaded machine.
    180_000
  )
})
