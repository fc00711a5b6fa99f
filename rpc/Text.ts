/**
 * Text a client hands the server that ends up in a program's argv or environment, in Postgres or
 * in an event: the one rule every such string follows, the size limits of what a program is
 * started with, and how a refusal names the field it is about.
 *
 * Postgres `text` and `jsonb` cannot hold NUL (U+0000) nor an unpaired UTF-16 surrogate, and exec
 * takes NUL as the end of a string; so neither may appear. Everything else (other control
 * characters included) is allowed and kept as it is: printing it safely is the reader's job.
 */
import { Option, ParseResult, Schema } from "effect"

/**
 * The kernel's limit on one argv string or `NAME=value` environment string, terminating NUL
 * included (Linux `MAX_ARG_STRLEN`, 32 pages of 4 KiB). A longer one makes exec fail with E2BIG.
 */
export const maxArgStringBytes = 128 * 1024

/**
 * The most a request's command, arguments, environment (`NAME=value`) and working directory may
 * take together, counted as JSON (each string as `JSON.stringify` writes it, which is never less
 * than its UTF-8 bytes plus the NUL exec adds). Far below the kernel's total (ARG_MAX, 2 MiB with
 * the default stack limit), and chosen so that every event such a request leads to
 * (`session.created` with command, args, cwd and name) stays under the event limit of 256 KiB.
 */
export const maxExecBytes = 192 * 1024

/** The longest path accepted (Linux `PATH_MAX`), in bytes. */
export const maxPathBytes = 4096

const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/** Why `text` cannot be stored or passed to exec (a NUL, an unpaired surrogate), or `undefined`. */
export const storableIssue = (text: string): string | undefined => {
  const nul = text.indexOf("\u0000")
  if (nul >= 0)
    return `contains a NUL character (at position ${nul}), which cannot be stored or passed to a program`
  const lone = loneSurrogate.exec(text)
  if (lone !== null) {
    return `contains an unpaired UTF-16 surrogate (at position ${lone.index}), which is not valid Unicode`
  }
  return undefined
}

/** Whether `text` has a C0 or C1 control character or DEL (which a terminal may act on). */
export const hasControl = (text: string): boolean => {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) return true
  }
  return false
}

/** Whether `text` can be stored and passed to exec. */
export const isStorable = (text: string): boolean => storableIssue(text) === undefined

/** Text that can be stored in Postgres and passed to exec: no NUL, no unpaired surrogate. */
export const StorableText = Schema.String.pipe(
  Schema.filter((text) => storableIssue(text) ?? true, { identifier: "StorableText" })
)

const bytes = (text: string) => Buffer.byteLength(text, "utf8")

/** One argv string: storable and under the kernel's limit for one string. */
export const ExecString = StorableText.pipe(
  Schema.filter((text) =>
    bytes(text) < maxArgStringBytes
      ? true
      : `is ${bytes(text)} bytes; one argument or environment entry may have at most ${maxArgStringBytes - 1} (the kernel's limit)`
  )
)

/** A path on the server: storable, at most `maxPathBytes`. */
export const PathText = StorableText.pipe(
  Schema.filter((text) =>
    bytes(text) <= maxPathBytes ? true : `is ${bytes(text)} bytes; a path may have at most ${maxPathBytes}`
  )
)

/** Storable text of at most `max` characters (the message does not repeat the text). */
export const BoundedText = (max: number) =>
  StorableText.pipe(
    Schema.filter((text) =>
      text.length <= max ? true : `is ${text.length} characters long; the most accepted is ${max}`
    )
  )

/** Replaces what cannot be stored (NUL, unpaired surrogates) with U+FFFD, for text the server only records. */
export const toStorable = (text: string): string =>
  isStorable(text)
    ? text
    : text.replaceAll("\u0000", "\uFFFD").replace(new RegExp(loneSurrogate.source, "g"), "\uFFFD")

/** `text` cut to at most `max` UTF-16 units without splitting a surrogate pair, `…` marking a cut. */
export const truncate = (text: string, max: number): string => {
  if (text.length <= max) return text
  let end = Math.max(0, max - 1)
  const last = text.charCodeAt(end - 1)
  if (last >= 0xd800 && last <= 0xdbff) end--
  return `${text.slice(0, end)}…`
}

/** Bytes of `text` as a JSON string (quotes and escapes included). */
export const jsonBytes = (text: string): number => bytes(JSON.stringify(text))

/** A field a request was refused for: its dotted path (`args.2`, `env.PATH`) and why. */
export interface FieldIssue {
  readonly field: string
  readonly message: string
}

/** The first issue of a parse error, naming its field by dotted path (`prefix` when it has none). */
export const firstIssue = (error: ParseResult.ParseError, prefix = "request"): FieldIssue => {
  const [issue] = ParseResult.ArrayFormatter.formatErrorSync(error)
  const field = issue === undefined || issue.path.length === 0 ? prefix : issue.path.map(String).join(".")
  return { field, message: `${field}: ${issue?.message ?? "is invalid"}` }
}

/** Checks `input` against `schema` (fields it does not name are ignored): the first refused field. */
export const check = <A, I>(schema: Schema.Schema<A, I>, input: unknown): Option.Option<FieldIssue> => {
  const result = Schema.decodeUnknownEither(schema)(input, { errors: "first", onExcessProperty: "ignore" })
  return result._tag === "Left" ? Option.some(firstIssue(result.left)) : Option.none()
}

/** What a program is started with, as a request gives it. */
export interface Exec {
  readonly command?: string | undefined
  readonly args: ReadonlyArray<string>
  readonly env: Readonly<Record<string, string>>
  readonly cwd?: string | undefined
}

/**
 * Checks what exec will be given: each environment name (non-empty, no `=`, storable), each
 * `NAME=value` under the kernel's limit for one string, and everything together (command, args,
 * environment and cwd, counted as JSON) within `maxExecBytes`. Strings are checked one by one by
 * the request's schema first (`ExecString`).
 */
export const checkExec = (exec: Exec): Option.Option<FieldIssue> => {
  const sizes = {
    command: exec.command === undefined ? 0 : jsonBytes(exec.command),
    args: 0,
    env: 0,
    cwd: exec.cwd === undefined ? 0 : jsonBytes(exec.cwd)
  }
  for (const arg of exec.args) sizes.args += jsonBytes(arg)
  for (const [name, value] of Object.entries(exec.env)) {
    const field = `env.${truncate(toStorable(name), 100)}`
    const nameIssue = storableIssue(name)
    const entry = bytes(name) + 1 + bytes(value)
    const issue =
      name === ""
        ? "an environment variable needs a name"
        : name.includes("=")
          ? "an environment variable's name cannot contain '='"
          : nameIssue !== undefined
            ? `the name ${nameIssue}`
            : entry >= maxArgStringBytes
              ? `is ${entry} bytes as NAME=value; one environment entry may have at most ${maxArgStringBytes - 1} (the kernel's limit)`
              : undefined
    if (issue !== undefined) return Option.some({ field, message: `${field}: ${issue}` })
    sizes.env += jsonBytes(name) + jsonBytes(value)
  }
  const total = sizes.command + sizes.args + sizes.env + sizes.cwd
  if (total <= maxExecBytes) return Option.none()
  const largest = (Object.keys(sizes) as Array<keyof typeof sizes>).reduce((a, b) =>
    sizes[b] > sizes[a] ? b : a
  )
  return Option.some({
    field: largest,
    message: `${largest}: the command, arguments, environment and working directory take ${total} bytes (counted as JSON); the most accepted is ${maxExecBytes}`
  })
}
