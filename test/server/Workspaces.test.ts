import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Either, Layer } from "effect"
import * as Client from "../../rpc/Client.js"
import { AddWorkspace, RemoveWorkspace } from "../../rpc/Workspaces.js"
import { clientLayer } from "../support/Attach.js"
import { makeRepo } from "../support/GitRepo.js"
import * as TestServer from "../support/TestServer.js"
import { tempDir } from "../support/TempDir.js"
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

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("workspaces", (it) => {
  it.scoped("a repository added from a directory inside it is registered at its top level", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const repo = yield* makeRepo({ "src/app.ts": "export {}\n" })
      const name = uniqueName("app")
      const info = yield* rpc.Workspaces.Add(AddWorkspace.make({ path: path.join(repo.path, "src"), name }))
      expect(info.name).toBe(name)
      expect(info.path).toBe(repo.path)
      expect(info.defaultBranch).toBe("main")
      expect(info.worktreesDir).toBe(`${repo.path}.worktrees`)
      expect(info.closePolicy).toBe("keep")
      const listed = yield* rpc.Workspaces.List()
      expect(listed.map((w) => w.name)).toContain(name)
      expect((yield* rpc.Workspaces.Get({ workspace: name })).id).toBe(info.id)
      yield* rpc.Workspaces.Remove(RemoveWorkspace.make({ workspace: name }))
      expect((yield* rpc.Workspaces.List()).map((w) => w.name)).not.toContain(name)
      // The repository itself is untouched.
      expect(fs.existsSync(path.join(repo.path, "src/app.ts"))).toBe(true)
    })
  )

  it.scoped("a directory that is no repository, a missing one and a relative path are refused", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const plain = yield* tempDir("vibes-plain-")
      const notRepo = yield* Effect.flip(rpc.Workspaces.Add(AddWorkspace.make({ path: plain })))
      expect(notRepo._tag).toBe("NotARepository")
      const missing = yield* Effect.flip(rpc.Workspaces.Add(AddWorkspace.make({ path: `${plain}/nothing` })))
      expect(missing._tag).toBe("NotARepository")
      const relative = yield* Effect.flip(rpc.Workspaces.Add(AddWorkspace.make({ path: "repo" })))
      expect(relative).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "path" })
    })
  )

  it.scoped("a branch name git refuses and a malformed workspace name are refused and nothing is added", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const repo = yield* makeRepo()
      const before = (yield* rpc.Workspaces.List()).length
      for (const branch of ["bad..name", "-x", "a b", "x.lock", "a~1", "refs/heads/@{-1}"]) {
        const error = yield* Effect.flip(
          rpc.Workspaces.Add(
            AddWorkspace.make({ path: repo.path, name: uniqueName("b"), defaultBranch: branch })
          )
        )
        expect(error._tag).toBe("InvalidBranchName")
      }
      const badName = yield* Effect.flip(
        rpc.Workspaces.Add(AddWorkspace.make({ path: repo.path, name: "../x" }))
      )
      expect(badName).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "name" })
      const inside = yield* Effect.flip(
        rpc.Workspaces.Add(
          AddWorkspace.make({
            path: repo.path,
            name: uniqueName("in"),
            worktreesDir: path.join(repo.path, "wt")
          })
        )
      )
      expect(inside).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "worktreesDir" })
      expect((yield* rpc.Workspaces.List()).length).toBe(before)
    })
  )

  it.scoped("a repository is registered once, and a name names one workspace", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const repo = yield* makeRepo()
      const other = yield* makeRepo()
      const name = uniqueName("once")
      yield* rpc.Workspaces.Add(AddWorkspace.make({ path: repo.path, name }))
      const samePath = yield* Effect.flip(
        rpc.Workspaces.Add(AddWorkspace.make({ path: repo.path, name: uniqueName("twice") }))
      )
      expect(samePath._tag).toBe("PathInUse")
      const sameName = yield* Effect.flip(rpc.Workspaces.Add(AddWorkspace.make({ path: other.path, name })))
      expect(sameName._tag).toBe("WorkspaceExists")
      const unknown = yield* Effect.either(rpc.Workspaces.Remove(RemoveWorkspace.make({ workspace: "nope" })))
      expect(Either.isLeft(unknown) && unknown.left._tag).toBe("WorkspaceNotFound")
      yield* rpc.Workspaces.Remove(RemoveWorkspace.make({ workspace: name }))
    })
  )

  it.scoped("vibes workspace add, ls and rm; a directory that is no repository exits 2", () =>
    Effect.gen(function* () {
      const repo = yield* makeRepo()
      const name = uniqueName("cli")
      const added = yield* vibes(["workspace", "add", repo.path, "--name", name])
      expect(added.stderr).toBe("")
      expect(added.stdout).toBe(`${name}\n`)
      expect(added.code).toBe(0)
      const listed = yield* vibes(["workspace", "ls"])
      expect(listed.stdout.split("\n")[0]).toMatch(
        /^NAME\s+DEFAULT BRANCH\s+ON CLOSE\s+ADDED\s+FOLLOWS\s+PATH$/
      )
      expect(listed.stdout).toMatch(new RegExp(`^${name}\\s+main\\s+keep\\s+\\S+\\s+-\\s+${repo.path}$`, "m"))
      const plain = yield* tempDir("vibes-plain-")
      const refused = yield* vibes(["workspace", "add", plain])
      expect(refused.code).toBe(2)
      expect(refused.stderr).toContain("is not inside a git repository")
      const removed = yield* vibes(["workspace", "rm", name])
      expect(removed.code).toBe(0)
      const again = yield* vibes(["workspace", "rm", name])
      expect(again.code).toBe(1)
      expect(again.stderr).toContain(`no workspace named "${name}"`)
    })
  )
})
