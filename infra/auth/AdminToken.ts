/**
 * The admin token: created at first start in the data directory (mode 0600), or given by
 * `VIBES_ADMIN_TOKEN`. Every network surface but `/healthz` checks it.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { Context, Effect, Layer, Option, Redacted, Schema } from "effect"

/** The token file cannot be read or written. */
export class AdminTokenError extends Schema.TaggedError<AdminTokenError>()("AdminTokenError", {
  message: Schema.String
}) {}

/** Name of the token file inside the data directory. */
export const fileName = "admin-token"

/** The node's admin token and a constant-time check against it. */
export class AdminToken extends Context.Tag("vibes/AdminToken")<
  AdminToken,
  {
    readonly token: Redacted.Redacted<string>
    /** Where the token came from: its file, or the environment. */
    readonly source:
      { readonly _tag: "File"; readonly path: string; readonly created: boolean } | { readonly _tag: "Env" }
    /** True when `candidate` is the token (constant time). */
    readonly verify: (candidate: string) => boolean
  }
>() {}

const digest = (s: string) => crypto.createHash("sha256").update(s, "utf8").digest()

/** A fresh random token: 32 bytes, base64url. */
export const generate = (): string => crypto.randomBytes(32).toString("base64url")

/** Reads the token file, creating it (0600) when missing and tightening a too-open mode. */
export const loadOrCreate = (
  dataDir: string
): Effect.Effect<{ token: string; created: boolean; path: string }, AdminTokenError> =>
  Effect.try({
    try: () => {
      const file = path.join(dataDir, fileName)
      try {
        fs.writeFileSync(file, generate() + "\n", { flag: "wx", mode: 0o600 })
        return { token: fs.readFileSync(file, "utf8").trim(), created: true, path: file }
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
      }
      if ((fs.statSync(file).mode & 0o077) !== 0) fs.chmodSync(file, 0o600)
      const token = fs.readFileSync(file, "utf8").trim()
      if (token.length < 16)
        throw new Error(`${file} holds no usable token; delete it to have a new one made`)
      return { token, created: false, path: file }
    },
    catch: (cause) =>
      new AdminTokenError({
        message: `cannot read or create the admin token in ${dataDir}: ${messageOf(cause)}`
      })
  })

/** Reads the token from the data directory without creating it (for the CLI). */
export const read = (dataDir: string): Effect.Effect<Option.Option<Redacted.Redacted<string>>> =>
  Effect.sync(() => {
    try {
      const token = fs.readFileSync(path.join(dataDir, fileName), "utf8").trim()
      return token === "" ? Option.none() : Option.some(Redacted.make(token))
    } catch {
      return Option.none()
    }
  })

/** Builds the service from a known token. */
export const make = (
  token: Redacted.Redacted<string>,
  source: AdminToken["Type"]["source"]
): AdminToken["Type"] => {
  const expected = digest(Redacted.value(token))
  return {
    token,
    source,
    verify: (candidate) => crypto.timingSafeEqual(digest(candidate), expected)
  }
}

/** The token from `override` when given, else from (or into) the data directory. */
export const layer = (options: {
  readonly dataDir: string
  readonly override: Option.Option<Redacted.Redacted<string>>
}): Layer.Layer<AdminToken, AdminTokenError> =>
  Layer.effect(
    AdminToken,
    Option.match(options.override, {
      onSome: (token) => Effect.succeed(make(token, { _tag: "Env" })),
      onNone: () =>
        Effect.map(loadOrCreate(options.dataDir), (loaded) =>
          make(Redacted.make(loaded.token), { _tag: "File", path: loaded.path, created: loaded.created })
        )
    })
  )

const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))
