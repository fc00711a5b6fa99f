import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Chunk, Context, Effect, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { JobSpec } from "../../rpc/Jobs.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { AddWorkspace, type ClosePolicy, RemoveWorkspace, RemoveWorktree } from "../../rpc/Workspaces.js"
import { clientLayer } from "../support/Attach.js"
import { git, makeRepo, type Repo } from "../support/GitRepo.js"
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

/** A repository registered as a workspace with `closePolicy`. */
const workspace = (rpc: Client.Client, closePolicy: ClosePolicy = "keep") =>
  Effect.gen(function* () {
    const repo = yield* makeRepo()
    const info = yield* rpc.Workspaces.Add(
      AddWorkspace.make({ path: repo.path, name: uniqueName("ws"), closePolicy })
    )
    return { repo, info }
  })

/** Runs `script` with sh in a new session on `branch` of `name`, and waits until it ends. */
const sessionOn = (rpc: Client.Client, name: string, branch: string, script: string, from?: string) =>
  Effect.gen(function* () {
    const info = yield* rpc.Sessions.Create(
      CreateSession.make({
        workspace: name,
        branch,
        ...(from !== undefined ? { from } : {}),
        command: "sh",
        args: ["-c", script]
      })
    )
    yield* rpc.Sessions.Attach({ sessionId: info.id, readOnly: true }).pipe(Stream.runDrain)
    return yield* rpc.Sessions.Get({ sessionId: info.id })
  })

/** The `workspace.worktree_closed` events after offset `after`, until `count` have come. */
const closedSince = (rpc: Client.Client, after: number, count: number) =>
  rpc.Events.Subscribe({
    from: { _tag: "Offset", offset: after + 1 },
    filter: EventFilter.make({ types: ["workspace.worktree_closed"] })
  }).pipe(
    Stream.take(count),
    Stream.runCollect,
    Effect.map(Chunk.toReadonlyArray),
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error("worktrees were not closed") })
  )

const head = (rpc: Client.Client) => Effect.map(rpc.Events.Head(), (answer) => answer.head)

const commitScript = (file: string, text: string, message: string) =>
  `printf '%s\\n' '${text}' > ${file} && git add ${file} && git commit -q -m '${message}'`

const branchesOf = (repo: Repo) => git(repo.path, "branch", "--format=%(refname:short)").split("\n")

layer(NodeLive, { timeout: 180_000, excludeTestServices: true })("worktrees", (it) => {
  it.scoped("ten sessions on ten branches of one repository commit at once, each in its own worktree", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const { repo, info } = yield* workspace(rpc)
      const before = yield* head(rpc)
      const agents = Array.from({ length: 10 }, (_, i) => i)
      const ended = yield* Effect.forEach(
        agents,
        (i) =>
          sessionOn(
            rpc,
            info.name,
            `agent-${i}`,
            commitScript("agent.txt", `agent ${i}`, `work of agent ${i}`)
          ),
        { concurrency: "unbounded" }
      )
      for (const session of ended) {
        expect(session.state).toBe("exited")
        expect(session.exitCode).toBe(0)
      }
      for (const i of agents) {
        expect(git(repo.path, "log", "-1", "--format=%s", `agent-${i}`)).toBe(`work of agent ${i}`)
        expect(git(repo.path, "show", `agent-${i}:agent.txt`)).toBe(`agent ${i}`)
        expect(git(repo.path, "rev-parse", `agent-${i}~1`)).toBe(git(repo.path, "rev-parse", "main"))
      }
      expect(git(repo.path, "log", "-1", "--format=%s", "main")).toBe("initial")
      git(repo.path, "fsck", "--no-progress")
      // Every session ran in its own worktree, which the keep policy leaves in place.
      yield* closedSince(rpc, before, 10)
      const worktrees = yield* rpc.Workspaces.Worktrees({ workspace: info.name })
      expect(worktrees.length).toBe(10)
      expect(new Set(worktrees.map((w) => w.sessionId))).toEqual(new Set(ended.map((s) => s.id)))
      for (const worktree of worktrees) {
        expect(worktree.state).toBe("kept")
        expect(worktree.path).toBe(path.join(info.worktreesDir, worktree.branch))
        const session = ended.find((s) => s.id === worktree.sessionId)
        expect(session?.cwd).toBe(worktree.path)
        expect(fs.readFileSync(path.join(worktree.path, "agent.txt"), "utf8")).toBe(
          `${worktree.branch.replace("-", " ")}\n`
        )
      }
      const listed = git(repo.path, "worktree", "list", "--porcelain")
      for (const worktree of worktrees) expect(listed).toContain(`worktree ${worktree.path}\n`)
    })
  )

  it.scoped("remove-when-clean removes a clean worktree and keeps one with uncommitted work", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const { repo, info } = yield* workspace(rpc, "remove-when-clean")
      const before = yield* head(rpc)
      yield* sessionOn(rpc, info.name, "clean", commitScript("a.txt", "a", "clean work"))
      yield* sessionOn(rpc, info.name, "dirty", "echo unsaved > notes.txt")
      const closed = yield* closedSince(rpc, before, 2)
      const byBranch = new Map(closed.map((event) => [(event.data as { branch: string }).branch, event.data]))
      expect(byBranch.get("clean")).toMatchObject({ state: "removed", stashed: false })
      expect(byBranch.get("dirty")).toMatchObject({ state: "kept", stashed: false })
      expect(fs.existsSync(path.join(info.worktreesDir, "clean"))).toBe(false)
      expect(git(repo.path, "log", "-1", "--format=%s", "clean")).toBe("clean work")
      expect(fs.readFileSync(path.join(info.worktreesDir, "dirty", "notes.txt"), "utf8")).toBe("unsaved\n")
    })
  )

  it.scoped("remove-always saves uncommitted work in a stash before it removes the worktree", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const { repo, info } = yield* workspace(rpc, "remove-always")
      const before = yield* head(rpc)
      yield* sessionOn(rpc, info.name, "scratch", "echo unsaved > notes.txt && echo changed >> README.md")
      const [closed] = yield* closedSince(rpc, before, 1)
      expect(closed?.data).toMatchObject({ branch: "scratch", state: "removed", stashed: true })
      expect(fs.existsSync(path.join(info.worktreesDir, "scratch"))).toBe(false)
      expect(git(repo.path, "stash", "list", "--format=%s")).toContain("vibes: uncommitted work of session")
      expect(git(repo.path, "show", "stash@{0}^3:notes.txt")).toBe("unsaved")
      expect(git(repo.path, "show", "stash@{0}:README.md")).toBe("hello\nchanged")
    })
  )

  it.scoped(
    "bad branches, a branch checked out elsewhere, a cwd and unknown names are refused and nothing is made",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { repo, info } = yield* workspace(rpc)
        const create = (fields: Partial<ConstructorParameters<typeof CreateSession>[0]>) =>
          Effect.flip(
            rpc.Sessions.Create(CreateSession.make({ workspace: info.name, command: "true", ...fields }))
          )
        for (const branch of ["bad..name", "-rf", "a b", "x.lock", "tail/"]) {
          expect((yield* create({ branch }))._tag).toBe("InvalidBranchName")
        }
        expect(yield* create({ branch: "main" })).toMatchObject({ _tag: "PathInUse", path: repo.path })
        expect(yield* create({ branch: "new", from: "no-such-ref" })).toMatchObject({
          _tag: "InvalidWorkspaceRequest",
          field: "from"
        })
        expect(yield* create({ branch: "main", from: "main" })).toMatchObject({
          _tag: "InvalidWorkspaceRequest",
          field: "from"
        })
        expect(yield* create({ branch: "x", cwd: "/tmp" })).toMatchObject({
          _tag: "InvalidSessionRequest",
          field: "cwd"
        })
        expect(yield* create({ branch: undefined })).toMatchObject({
          _tag: "InvalidSessionRequest",
          field: "branch"
        })
        expect((yield* create({ workspace: "no-such-workspace", branch: "x" }))._tag).toBe(
          "WorkspaceNotFound"
        )
        fs.mkdirSync(path.join(info.worktreesDir, "occupied"), { recursive: true })
        expect(yield* create({ branch: "occupied" })).toMatchObject({ _tag: "PathInUse" })
        expect(branchesOf(repo)).toEqual(["main"])
        expect(yield* rpc.Workspaces.Worktrees({ workspace: info.name })).toEqual([])
        expect(git(repo.path, "worktree", "list", "--porcelain").match(/^worktree /gm)?.length).toBe(1)
      })
  )

  it.scoped(
    "a kept worktree is taken over by the next session on its branch; rm keeps uncommitted work unless forced",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { repo, info } = yield* workspace(rpc)
        const before = yield* head(rpc)
        const first = yield* sessionOn(
          rpc,
          info.name,
          "feature/login",
          commitScript("login.ts", "one", "first")
        )
        const second = yield* sessionOn(rpc, info.name, "feature/login", "echo draft > draft.txt")
        expect(second.cwd).toBe(first.cwd)
        expect(path.basename(second.cwd)).toBe("feature-login")
        yield* closedSince(rpc, before, 2)
        const [worktree] = yield* rpc.Workspaces.Worktrees({ workspace: info.name })
        expect(worktree).toMatchObject({ sessionId: second.id, state: "kept", branch: "feature/login" })
        const dirty = yield* Effect.flip(
          rpc.Workspaces.RemoveWorktree(
            RemoveWorktree.make({ workspace: info.name, branch: "feature/login" })
          )
        )
        expect(dirty._tag).toBe("WorktreeDirty")
        const refused = yield* Effect.flip(
          rpc.Workspaces.Remove(RemoveWorkspace.make({ workspace: info.name }))
        )
        expect(refused._tag).toBe("WorktreeDirty")
        expect(fs.readFileSync(path.join(second.cwd, "draft.txt"), "utf8")).toBe("draft\n")
        yield* rpc.Workspaces.Remove(RemoveWorkspace.make({ workspace: info.name, force: true }))
        expect(fs.existsSync(second.cwd)).toBe(false)
        expect(git(repo.path, "log", "-1", "--format=%s", "feature/login")).toBe("first")
        expect(git(repo.path, "worktree", "list", "--porcelain").match(/^worktree /gm)?.length).toBe(1)
      })
  )

  it.scoped(
    "a job runs in a worktree of its own; vibes new and vibes run take --workspace and --branch",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { repo, info } = yield* workspace(rpc)
        const job = yield* rpc.Jobs.Submit(
          JobSpec.make({
            command: "git rev-parse --abbrev-ref HEAD && pwd",
            shell: true,
            workspace: info.name,
            branch: "job-branch"
          })
        )
        yield* rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(Stream.runDrain)
        expect(job.spec.cwd).toBe(path.join(info.worktreesDir, "job-branch"))
        const logs = yield* rpc.Jobs.Logs({ jobId: job.id }).pipe(
          Stream.runCollect,
          Effect.map(Chunk.toReadonlyArray)
        )
        const stdout = logs
          .flatMap((o) => (o._tag === "JobLog" && o.stream === "stdout" ? [o.chunk] : []))
          .join("")
        expect(stdout).toBe(`job-branch\n${path.join(info.worktreesDir, "job-branch")}\n`)

        const run = yield* vibes([
          "run",
          "--workspace",
          info.name,
          "--branch",
          "cli-job",
          "--",
          "git",
          "branch",
          "--show-current"
        ])
        expect(run.stdout).toBe("cli-job\n")
        expect(run.code).toBe(0)
        const created = yield* vibes([
          "new",
          "--workspace",
          info.name,
          "--branch",
          "cli-session",
          "--json",
          "--",
          "true"
        ])
        expect(created.code).toBe(0)
        expect(JSON.parse(created.stdout)).toMatchObject({ cwd: path.join(info.worktreesDir, "cli-session") })
        const bad = yield* vibes(["new", "--workspace", info.name, "--branch", "a..b", "--", "true"])
        expect(bad.code).toBe(2)
        expect(bad.stderr).toContain("as a branch name")
        expect(branchesOf(repo).sort()).toEqual(["cli-job", "cli-session", "job-branch", "main"])
      })
  )
})
