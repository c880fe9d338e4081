import Foundation
import MigPlanBasics

/// What a status probe found: is the container there, running, with which PID since when.
public struct ContainerState: Sendable, Equatable, Codable {
    public enum Status: String, Sendable, Equatable, Codable {
        case running, created, paused, stopped, absent
    }

    public var status: Status
    /// The init process's PID as the host sees it (0 or nil when not running).
    public var pid: Int32?
    /// runc: the container's creation time (RFC 3339, as runc prints it); Docker: `State.StartedAt`.
    public var startedAt: String?
    /// runc: the container id; Docker: the full 64-hex-digit container id.
    public var id: String?
    /// runc: the bundle directory.
    public var bundle: String?
    /// Docker: the image the container was created from.
    public var image: String?

    public init(status: Status, pid: Int32? = nil, startedAt: String? = nil, id: String? = nil,
                bundle: String? = nil, image: String? = nil) {
        self.status = status
        self.pid = pid
        self.startedAt = startedAt
        self.id = id
        self.bundle = bundle
        self.image = image
    }

    public static let absent = ContainerState(status: .absent)

    public var isRunning: Bool { status == .running }
}

/// Parsers of `runc state` and `docker inspect` output.
public enum ContainerStateParser {
    private struct RuncState: Decodable {
        var id: String?
        var pid: Int32?
        var status: String
        var bundle: String?
        var created: String?
    }

    /// Parse the result of `runc state NAME`. A non-zero exit whose stderr says the container does
    /// not exist is `.absent`; any other failure, or JSON that is not runc's, is a typed error.
    public static func parseRuncState(_ output: CommandOutput, host: String? = nil, container: String? = nil) throws -> ContainerState {
        if !output.succeeded {
            let err = output.stderrText
            if err.contains("does not exist") || err.contains("container not found") {
                return .absent
            }
            throw RuntimeError(code: .commandFailed, host: host, container: container, operation: "runc state",
                               message: "runc state failed: \(firstLine(err))", exitStatus: output.exitStatus,
                               stderrTail: output.stderrTail(maxBytes: 2048))
        }
        let state: RuncState
        do {
            state = try JSONDecoder().decode(RuncState.self, from: Data(output.stdout))
        } catch {
            throw malformed("runc state", host: host, container: container, output: output,
                            why: "not runc's state JSON (\(decodingSummary(error)))")
        }
        let status: ContainerState.Status
        switch state.status {
        case "running": status = .running
        case "created": status = .created
        case "paused", "pausing": status = .paused
        case "stopped": status = .stopped
        default:
            throw malformed("runc state", host: host, container: container, output: output,
                            why: "unknown status \"\(state.status)\"")
        }
        let pid = (state.pid ?? 0) > 0 ? state.pid : nil
        return ContainerState(status: status, pid: status == .stopped ? nil : pid, startedAt: state.created,
                              id: state.id, bundle: state.bundle)
    }

    private struct DockerInspect: Decodable {
        struct State: Decodable {
            var Status: String
            var Pid: Int32?
            var StartedAt: String?
        }
        struct Config: Decodable { var Image: String? }
        var Id: String
        var State: State
        var Config: Config?
    }

    /// Parse the result of `docker inspect --type container NAME` (a JSON array of one object).
    /// "No such container" is `.absent`.
    public static func parseDockerInspect(_ output: CommandOutput, host: String? = nil, container: String? = nil) throws -> ContainerState {
        if !output.succeeded {
            let err = output.stderrText
            if err.contains("No such container") || err.contains("No such object") {
                return .absent
            }
            throw RuntimeError(code: .commandFailed, host: host, container: container, operation: "docker inspect",
                               message: "docker inspect failed: \(firstLine(err))", exitStatus: output.exitStatus,
                               stderrTail: output.stderrTail(maxBytes: 2048))
        }
        let items: [DockerInspect]
        do {
            items = try JSONDecoder().decode([DockerInspect].self, from: Data(output.stdout))
        } catch {
            throw malformed("docker inspect", host: host, container: container, output: output,
                            why: "not docker's inspect JSON (\(decodingSummary(error)))")
        }
        guard let item = items.first else { return .absent }
        guard items.count == 1 else {
            throw malformed("docker inspect", host: host, container: container, output: output,
                            why: "\(items.count) objects where one container was asked for")
        }
        let status: ContainerState.Status
        switch item.State.Status {
        case "running", "restarting": status = .running
        case "created": status = .created
        case "paused": status = .paused
        case "exited", "dead", "removing": status = .stopped
        default:
            throw malformed("docker inspect", host: host, container: container, output: output,
                            why: "unknown state \"\(item.State.Status)\"")
        }
        let pid = (item.State.Pid ?? 0) > 0 ? item.State.Pid : nil
        let started = item.State.StartedAt.flatMap { $0.hasPrefix("0001-01-01") ? nil : $0 }
        return ContainerState(status: status, pid: status == .running || status == .paused ? pid : nil,
                              startedAt: started, id: item.Id, image: item.Config?.Image)
    }

    static func malformed(_ op: String, host: String?, container: String?, output: CommandOutput, why: String) -> RuntimeError {
        let head = String(decoding: output.stdout.prefix(200), as: UTF8.self)
        return RuntimeError(code: .malformedOutput, host: host, container: container, operation: op,
                            message: "\(why); output began: \(head.debugDescription)",
                            exitStatus: output.exitStatus, stderrTail: output.stderrTail(maxBytes: 1024))
    }

    static func decodingSummary(_ error: any Error) -> String {
        switch error as? DecodingError {
        case .dataCorrupted(let c)?: return "invalid JSON\(c.codingPath.isEmpty ? "" : " at " + path(c.codingPath))"
        case .keyNotFound(let k, let c)?: return "missing \(path(c.codingPath + [k]))"
        case .typeMismatch(_, let c)?: return "wrong type at \(path(c.codingPath))"
        case .valueNotFound(_, let c)?: return "null at \(path(c.codingPath))"
        default: return "\(error)"
        }
    }

    private static func path(_ keys: [any CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
}

func firstLine(_ s: String) -> String {
    let line = s.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
    return line.count > 300 ? String(line.prefix(300)) + "…" : line
}
