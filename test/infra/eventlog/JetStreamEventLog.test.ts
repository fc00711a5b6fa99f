import { freshLog } from "../../support/TestNats.js"
import { eventLogContract } from "./contract.js"

eventLogContract("JetStream event log", freshLog(), freshLog)
