/**
 * Authentication contracts shared by the server and every client.
 *
 * Credentials travel once per connection, never per message: on the WebSocket upgrade of `/rpc`
 * (an `authorization: Bearer` header, the login cookie a browser got from `/login`, or the token
 * in a subprotocol for clients that cannot set headers), and on every plain HTTP request. The
 * server checks them before it reads a byte of the body or a frame.
 */
import { Context, Schema } from "effect"
import * as RpcMiddleware from "@effect/rpc/RpcMiddleware"

/** The request carried no credentials, or credentials that do not match. */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", {
  message: Schema.String
}) {}

/** Too many refused credentials came from this address; it may try again after the wait. */
export class TooManyAttempts extends Schema.TaggedError<TooManyAttempts>()("TooManyAttempts", {
  retryAfterSeconds: Schema.Int,
  message: Schema.String
}) {}

/** How a request proved who it is. */
export type CredentialKind = "header" | "cookie" | "protocol"

/** Who a request is acting as, once authenticated, and where it came from. */
export interface Identity {
  readonly kind: "admin"
  readonly via: CredentialKind
  /** The browser login it used (a non-secret reference), when it came with the login cookie. */
  readonly login: string | null
  /** The client's address (behind a trusted proxy: the address the proxy names). */
  readonly clientAddress: string
}

/** The identity of the caller of an RPC. */
export class Principal extends Context.Tag("vibes/Principal")<Principal, Identity>() {}

/**
 * Gives every RPC the identity its connection proved at the upgrade. Clients add nothing to
 * their messages.
 */
export class AuthMiddleware extends RpcMiddleware.Tag<AuthMiddleware>()("vibes/AuthMiddleware", {
  provides: Principal,
  failure: Unauthorized
}) {}

/** Name of the cookie that `/login` sets for browsers: a login id, never the token. */
export const cookieName = "vibes_login"

/** The cookie earlier versions set (it held the token itself); never accepted, cleared on sight. */
export const legacyCookieName = "vibes_token"

/** The WebSocket subprotocol of the RPC endpoint. */
export const rpcProtocol = "vibes.rpc.v1"

/** Prefix of the subprotocol that carries a token, for clients that cannot set headers. */
export const tokenProtocolPrefix = "vibes.token."

const toBase64Url = (text: string): string => {
  let binary = ""
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte)
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")
}

/** The subprotocols a client offers to reach `/rpc` with `token` (or with its cookie when none). */
export const rpcProtocols = (token: string | undefined): Array<string> =>
  token === undefined ? [rpcProtocol] : [rpcProtocol, tokenProtocolPrefix + toBase64Url(token)]
