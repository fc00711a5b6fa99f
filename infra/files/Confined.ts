/**
 * Files inside a root directory, and nowhere else. A client's path is refused before it touches
 * the disk when it is absolute, has a `..` segment, a NUL, a backslash or a percent-encoded byte
 * (`%2e%2e`, `%2f`): one spelling a path, no decoding. What is opened is then checked where it
 * really is: the file (or, for a name to create, rename or delete, its directory) is opened
 * first, without following a final symlink, and `/proc/self/fd/N` says what was opened; anything
 * whose real path is outside the root is closed and refused. Operations on a name then go
 * through that open directory (`/proc/self/fd/N/name`), so a directory swapped for a symlink
 * after the check is not followed: there is no window between check and use.
 */
import * as fs from "node:fs"
import * as path from "node:path"

/** Why a path was refused. */
export type Refusal = "absolute" | "parent" | "nul" | "encoded" | "backslash" | "outside" | "symlink"

/** A path the root does not allow; `reason` says which rule. */
export class PathRefused extends Error {
  constructor(
    readonly path: string,
    readonly reason: Refusal,
    message: string
  ) {
    super(message)
  }
}

/** Checks a client's path lexically; returns its segments (empty: the root itself). */
export const segments = (relative: string): ReadonlyArray<string> => {
  const refuse = (reason: Refusal, why: string) => {
    throw new PathRefused(relative, reason, `${JSON.stringify(relative.slice(0, 200))} ${why}`)
  }
  if (relative.includes("\u0000")) refuse("nul", "contains a NUL character")
  if (relative.startsWith("/")) refuse("absolute", "is absolute: paths are relative to the root")
  if (relative.includes("\\")) refuse("backslash", "contains a backslash")
  if (/%[0-9A-Fa-f]{2}/.test(relative))
    refuse("encoded", "contains a percent-encoded byte: send the path as it is")
  const parts = relative.split("/").filter((part) => part !== "" && part !== ".")
  if (parts.includes("..")) refuse("parent", "has a '..' segment")
  return parts
}

/** Whether `child` is `root` or inside it. */
const within = (root: string, child: string) =>
  child === root || child.startsWith(root.endsWith("/") ? root : `${root}/`)

/** The real path of an open descriptor. */
const whereIs = (fd: number) => fs.promises.readlink(`/proc/self/fd/${fd}`)

/** Test hooks: what runs between the lexical check and the open (to swap in a symlink). */
export interface Hooks {
  readonly beforeOpen?: () => Promise<void>
}

/** An open file or directory inside the root. Close it. */
export interface Opened {
  readonly fd: number
  /** Its real path. */
  readonly real: string
  readonly stat: fs.Stats
  readonly close: () => Promise<void>
}

const openFd = (target: string, flags: number) =>
  new Promise<number>((resolve, reject) => {
    fs.open(target, flags, (error, fd) => (error === null ? resolve(fd) : reject(error)))
  })

/**
 * Opens `relative` under `root` (a real path) for reading, following no final symlink, and checks
 * where the descriptor really points; `"directory"` opens only a directory.
 */
export const open = async (
  root: string,
  relative: string,
  mode: "read" | "directory" = "read",
  hooks: Hooks = {}
): Promise<Opened> => {
  const parts = segments(relative)
  await hooks.beforeOpen?.()
  const target = path.join(root, ...parts)
  const flags =
    fs.constants.O_RDONLY |
    fs.constants.O_NONBLOCK |
    fs.constants.O_NOFOLLOW |
    (mode === "directory" ? fs.constants.O_DIRECTORY : 0)
  let fd: number
  try {
    fd = await openFd(target, flags)
  } catch (error) {
    const link =
      isCode(error, "ELOOP") ||
      (isCode(error, "ENOTDIR") &&
        (await fs.promises.lstat(target).then(
          (stat) => stat.isSymbolicLink(),
          () => false
        )))
    if (link) {
      throw new PathRefused(
        relative,
        "symlink",
        `${JSON.stringify(relative)} is a symbolic link, which is not followed`
      )
    }
    throw error
  }
  const close = () =>
    new Promise<void>((resolve) => {
      fs.close(fd, () => resolve())
    })
  try {
    const real = await whereIs(fd)
    if (!within(root, real)) {
      throw new PathRefused(
        relative,
        "outside",
        `${JSON.stringify(relative)} leads outside the root (through a symbolic link)`
      )
    }
    const stat = await new Promise<fs.Stats>((resolve, reject) =>
      fs.fstat(fd, (error, stats) => (error === null ? resolve(stats) : reject(error)))
    )
    return { fd, real, stat, close }
  } catch (error) {
    await close()
    throw error
  }
}

/** Whether `error` is a Node system error with `code`. */
export const isCode = (error: unknown, code: string): boolean =>
  typeof error === "object" && error !== null && "code" in error && error.code === code

/**
 * Opens the directory that holds `relative`'s last segment (checked like `open`) and returns the
 * name in it, for creating, renaming and deleting: `at` is the path of that name through the
 * open directory.
 */
export const openParent = async (
  root: string,
  relative: string,
  hooks: Hooks = {}
): Promise<{ readonly dir: Opened; readonly name: string; readonly at: string }> => {
  const parts = segments(relative)
  const name = parts[parts.length - 1]
  if (name === undefined) {
    throw new PathRefused(
      relative,
      "parent",
      "names the root itself, which cannot be created, renamed or deleted"
    )
  }
  const dir = await open(root, parts.slice(0, -1).join("/"), "directory", hooks)
  return { dir, name, at: `/proc/self/fd/${dir.fd}/${name}` }
}
