/**
 * The public contracts of vibes: schemas, errors, RPC groups and the client constructor.
 */
export * as Artifacts from "./Artifacts.js"
export * as AttachClient from "./AttachClient.js"
export * as AttachProtocol from "./AttachProtocol.js"
export * as Auth from "./Auth.js"
export * as Client from "./Client.js"
export * as Events from "./Events.js"
export * as EventsRpcs from "./EventsRpcs.js"
export * as Files from "./Files.js"
export * as Follow from "./Follow.js"
export * as Git from "./Git.js"
export * as Jobs from "./Jobs.js"
export * as Proxy from "./Proxy.js"
export * as Recordings from "./Recordings.js"
export * as Sessions from "./Sessions.js"
export * as System from "./System.js"
export * as Workspaces from "./Workspaces.js"
