/**
 * Real git repositories for tests, owned by the account session and job programs run as (the
 * sandbox's `vibes` user when the tests run as root), so that vibes' git and the programs can
 * both work in them.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect } from "effect"
import { tempDir } from "./TempDir.js"

/** Runs git in `cwd` and returns its stdout, trimmed; throws on failure. */
export const git = (cwd: string, ...args: ReadonlyArray<string>): string =>
  childProcess
    .execFileSync("git", ["-c", "safe.directory=*", "-C", cwd, ...args], {
      encoding: "utf8",
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: cwd, LC_ALL: "C", GIT_CONFIG_NOSYSTEM: "1" }
    })
    .trim()

/** The uid and gid programs run as: the sandbox's `vibes` user under root, else this process's. */
export const programOwner = (): { readonly uid: number; readonly gid: number } => {
  if (process.getuid?.() !== 0) return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }
  const uid = Number(childProcess.execFileSync("id", ["-u", "vibes"], { encoding: "utf8" }).trim())
  const gid = Number(childProcess.execFileSync("id", ["-g", "vibes"], { encoding: "utf8" }).trim())
  return { uid, gid }
}

const chownTree = (dir: string, owner: { readonly uid: number; readonly gid: number }) => {
  fs.chownSync(dir, owner.uid, owner.gid)
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) chownTree(full, owner)
    else fs.lchownSync(full, owner.uid, owner.gid)
  }
}

/** A repository: `dir/repo` on branch `main` with one commit (README.md), in a scoped temp dir. */
export interface Repo {
  /** The temp dir holding the repository (and its default worktrees dir, `repo.worktrees`). */
  readonly root: string
  /** The repository's top level. */
  readonly path: string
}

/** A fresh repository with one commit, owned by the programs' account; removed afterwards. */
export const makeRepo = (files: Readonly<Record<string, string>> = { "README.md": "hello\n" }) =>
  Effect.gen(function* () {
    const root = fs.realpathSync(yield* tempDir("vibes-repo-"))
    const repo = path.join(root, "repo")
    fs.mkdirSync(repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Vibes Test")
    git(repo, "config", "user.email", "test@vibes.invalid")
    for (const [name, content] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(repo, name)), { recursive: true })
      fs.writeFileSync(path.join(repo, name), content)
    }
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    chownTree(root, programOwner())
    return { root, path: repo } satisfies Repo
  })

/** Hands what a test wrote under `dir` to the programs' account. */
export const giveToPrograms = (dir: string) => chownTree(dir, programOwner())
