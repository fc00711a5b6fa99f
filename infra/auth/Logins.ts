/**
 * Browser logins (`vibes_logins`). Logging in with the admin token gives the browser a cookie
 * with a random login id, never the token; the server keeps only the id's SHA-256. A login
 * expires `ttl` after its id was issued and at the latest `maxAge` after the person logged in;
 * an id older than `rotateAfter` is replaced by a new one on the next request (the old one stays
 * valid for a short grace, for requests already on their way). Logging out revokes every id of
 * the login at once.
 *
 * Each node remembers valid ids for a few seconds, so a request costs no query; a logout on one
 * node takes effect on the others within that time.
 */
import * as crypto from "node:crypto"
import { Clock, Context, Duration, Effect, Layer, Option, Schema } from "effect"
import { SqlClient } from "@effect/sql/SqlClient"

/** The login store could not be read or written. */
export class LoginStoreError extends Schema.TaggedError<LoginStoreError>()("LoginStoreError", {
  message: Schema.String
}) {}

/** A valid login. */
export interface Login {
  /** A short, non-secret reference to the login (for events and logs). */
  readonly ref: string
  readonly principal: "admin"
  readonly firstLoginAt: Date
  readonly issuedAt: Date
  readonly expiresAt: Date
}

/** What a new or rotated id gives the browser. */
export interface Issued {
  /** The cookie value. */
  readonly id: string
  readonly login: Login
}

/** How long logins live. */
export interface Settings {
  /** An id is valid this long after it was issued. */
  readonly ttl: Duration.Duration
  /** An id older than this is replaced on the next request. */
  readonly rotateAfter: Duration.Duration
  /** A replaced id stays valid this long. */
  readonly rotationGrace: Duration.Duration
  /** No id of a login is valid longer than this after the login. */
  readonly maxAge: Duration.Duration
  /** How long a node trusts a valid id without asking the database again. */
  readonly cacheFor: Duration.Duration
}

/** The defaults: 7 days, rotated hourly, at most 30 days in all; cached for 5 s. */
export const defaults: Settings = {
  ttl: Duration.days(7),
  rotateAfter: Duration.hours(1),
  rotationGrace: Duration.minutes(1),
  maxAge: Duration.days(30),
  cacheFor: Duration.seconds(5)
}

/** Who logs in, from where. */
export interface Client {
  readonly address: string
  readonly userAgent: string | undefined
}

/** The login store. */
export class Logins extends Context.Tag("vibes/Logins")<
  Logins,
  {
    readonly settings: Settings
    /** Starts a login as `principal`; the id goes into the cookie. */
    readonly create: (principal: "admin", client: Client) => Effect.Effect<Issued, LoginStoreError>
    /** The login of a cookie value, when it is valid now. */
    readonly verify: (id: string) => Effect.Effect<Option.Option<Login>, LoginStoreError>
    /** Whether the id should be replaced now. */
    readonly rotationDue: (login: Login, now: Date) => boolean
    /** Replaces `id` by a new id of the same login; the old one lapses after the grace. */
    readonly rotate: (id: string, client: Client) => Effect.Effect<Option.Option<Issued>, LoginStoreError>
    /** Revokes every id of the login of `id`; returns the login it revoked, if any. */
    readonly revoke: (id: string) => Effect.Effect<Option.Option<Login>, LoginStoreError>
    /** Deletes logins that expired before `before`. */
    readonly prune: (before: Date) => Effect.Effect<number, LoginStoreError>
  }
>() {}

const hash = (id: string): Buffer => crypto.createHash("sha256").update(id, "utf8").digest()

/** Ids are 32 random bytes in base64url: 43 characters. */
const idPattern = /^[A-Za-z0-9_-]{43}$/

const Row = Schema.Struct({
  id_hash: Schema.Uint8ArrayFromSelf,
  principal: Schema.Literal("admin"),
  first_login_at: Schema.DateFromSelf,
  created_at: Schema.DateFromSelf,
  expires_at: Schema.DateFromSelf,
  revoked_at: Schema.NullOr(Schema.DateFromSelf),
  chain_id: Schema.Uint8ArrayFromSelf
})
const decodeRows = Schema.decodeUnknown(Schema.Array(Row))

const toLogin = (row: typeof Row.Type): Login => ({
  ref: Buffer.from(row.chain_id).toString("hex").slice(0, 16),
  principal: row.principal,
  firstLoginAt: row.first_login_at,
  issuedAt: row.created_at,
  expiresAt: row.expires_at
})

const failed = (what: string) => (cause: unknown) =>
  new LoginStoreError({
    message: `cannot ${what} the login: ${cause instanceof Error ? cause.message : String(cause)}`
  })

/** The store on the node's database. */
export const make = (settings: Settings = defaults) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient
    const cache = new Map<string, { readonly login: Login; readonly until: number }>()

    const lookup = (idHash: Buffer) =>
      sql`
        SELECT id_hash, principal, first_login_at, created_at, expires_at, revoked_at, chain_id
        FROM vibes_logins WHERE id_hash = ${idHash}
      `.pipe(Effect.flatMap(decodeRows), Effect.mapError(failed("read")))

    const insert = (chainId: Buffer, firstLoginAt: Date, principal: "admin", client: Client) =>
      Effect.gen(function* () {
        const id = crypto.randomBytes(32).toString("base64url")
        const now = new Date(yield* Clock.currentTimeMillis)
        const expiresAt = new Date(
          Math.min(
            now.getTime() + Duration.toMillis(settings.ttl),
            firstLoginAt.getTime() + Duration.toMillis(settings.maxAge)
          )
        )
        yield* sql`
          INSERT INTO vibes_logins (id_hash, chain_id, principal, first_login_at, created_at, expires_at,
            client_address, user_agent)
          VALUES (${hash(id)}, ${chainId}, ${principal}, ${firstLoginAt}, ${now}, ${expiresAt},
            ${client.address}, ${client.userAgent?.slice(0, 300) ?? null})
        `.pipe(Effect.mapError(failed("record")))
        const login: Login = {
          ref: chainId.toString("hex").slice(0, 16),
          principal,
          firstLoginAt,
          issuedAt: now,
          expiresAt
        }
        cache.set(id, { login, until: now.getTime() + Duration.toMillis(settings.cacheFor) })
        return { id, login } satisfies Issued
      })

    const verify = (id: string): Effect.Effect<Option.Option<Login>, LoginStoreError> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        if (!idPattern.test(id)) return Effect.succeed(Option.none())
        const cached = cache.get(id)
        if (cached !== undefined && cached.until > now && cached.login.expiresAt.getTime() > now) {
          return Effect.succeed(Option.some(cached.login))
        }
        cache.delete(id)
        return Effect.map(lookup(hash(id)), (rows) => {
          const row = rows[0]
          if (row === undefined || row.revoked_at !== null || row.expires_at.getTime() <= now) {
            return Option.none()
          }
          const login = toLogin(row)
          if (cache.size > 10_000) cache.clear()
          cache.set(id, { login, until: now + Duration.toMillis(settings.cacheFor) })
          return Option.some(login)
        })
      })

    const forgetChain = (ref: string) => {
      for (const [id, entry] of cache) if (entry.login.ref === ref) cache.delete(id)
    }

    return Logins.of({
      settings,
      create: (principal, client) => {
        const chainId = crypto.randomBytes(16)
        return insert(chainId, new Date(), principal, client)
      },
      verify,
      rotationDue: (login, now) =>
        now.getTime() - login.issuedAt.getTime() >= Duration.toMillis(settings.rotateAfter) &&
        login.expiresAt.getTime() < login.firstLoginAt.getTime() + Duration.toMillis(settings.maxAge),
      rotate: (id, client) =>
        Effect.gen(function* () {
          if (!idPattern.test(id)) return Option.none()
          const now = yield* Clock.currentTimeMillis
          const rows = yield* lookup(hash(id))
          const row = rows[0]
          if (row === undefined || row.revoked_at !== null || row.expires_at.getTime() <= now) {
            return Option.none()
          }
          const graceEnd = new Date(now + Duration.toMillis(settings.rotationGrace))
          // Only the first of two concurrent rotations of one id wins; the other keeps its id.
          const shortened = yield* sql`
            UPDATE vibes_logins SET expires_at = ${graceEnd}
            WHERE id_hash = ${hash(id)} AND expires_at > ${graceEnd} AND revoked_at IS NULL
            RETURNING id_hash
          `.pipe(Effect.mapError(failed("rotate")))
          if (shortened.length === 0) return Option.none()
          cache.delete(id)
          const chainId = Buffer.from(row.chain_id)
          return Option.some(yield* insert(chainId, row.first_login_at, row.principal, client))
        }),
      revoke: (id) =>
        Effect.gen(function* () {
          if (!idPattern.test(id)) return Option.none()
          const rows = yield* lookup(hash(id))
          const row = rows[0]
          if (row === undefined) return Option.none()
          const now = new Date(yield* Clock.currentTimeMillis)
          yield* sql`UPDATE vibes_logins SET revoked_at = ${now} WHERE chain_id = ${Buffer.from(row.chain_id)} AND revoked_at IS NULL`.pipe(
            Effect.mapError(failed("revoke"))
          )
          const login = toLogin(row)
          forgetChain(login.ref)
          return Option.some(login)
        }),
      prune: (before) =>
        sql`DELETE FROM vibes_logins WHERE expires_at < ${before} RETURNING id_hash`.pipe(
          Effect.map((rows) => rows.length),
          Effect.mapError(failed("prune"))
        )
    })
  })

/** The store, with `settings`. */
export const layer = (settings: Settings = defaults): Layer.Layer<Logins, never, SqlClient> =>
  Layer.effect(Logins, make(settings))
