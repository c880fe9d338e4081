import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The algorithm lists a server offers in its KEXINIT (RFC 4253 section 7.1), read by a separate,
/// short plain-TCP probe after a failed handshake so that the error can say what the server offered.
struct ServerOffer: Sendable, Equatable {
    var kex: [String]
    var hostKey: [String]
    var ciphersCS: [String]
    var ciphersSC: [String]
    var macsCS: [String]
    var macsSC: [String]

    /// Parse a KEXINIT payload (starting with the message number 20).
    init?(kexinitPayload p: [UInt8]) {
        guard p.count > 17, p[0] == 20 else { return nil }
        var at = 17
        var lists: [[String]] = []
        for _ in 0..<6 {
            guard at + 4 <= p.count else { return nil }
            let len = Int(p[at]) << 24 | Int(p[at + 1]) << 16 | Int(p[at + 2]) << 8 | Int(p[at + 3])
            at += 4
            guard len >= 0, at + len <= p.count else { return nil }
            let s = String(decoding: p[at..<at + len], as: UTF8.self)
            lists.append(s.isEmpty ? [] : s.split(separator: ",").map(String.init))
            at += len
        }
        kex = lists[0]
        hostKey = lists[1]
        ciphersCS = lists[2]
        ciphersSC = lists[3]
        macsCS = lists[4]
        macsSC = lists[5]
    }

    func offered(_ type: MethodType) -> [String] {
        switch type {
        case .kex: return kex.filter { !$0.hasPrefix("ext-info-") && !$0.hasPrefix("kex-strict-") }
        case .hostKey: return hostKey
        case .cryptCS: return ciphersCS
        case .cryptSC: return ciphersSC
        case .macCS: return macsCS
        case .macSC: return macsSC
        }
    }

    /// The first method for which the plan's list and the server's have nothing in common.
    func mismatches(_ algorithms: SSHAlgorithms) -> [(MethodType, allowed: [String], offered: [String])] {
        var out: [(MethodType, [String], [String])] = []
        for type in MethodType.allCases {
            let allowed = type.names(in: algorithms)
            let offered = offered(type)
            if Set(allowed).isDisjoint(with: offered) { out.append((type, allowed, offered)) }
        }
        return out
    }

    /// Connects to `address`:`port`, exchanges banners, reads the server's KEXINIT and hangs up.
    /// Nil when anything goes wrong (the probe only improves an error message).
    static func probe(address: String, port: Int, deadline: ContinuousClock.Instant) -> ServerOffer? {
        guard let fd = try? TCP.connect(address: address, port: port, deadline: deadline) else { return nil }
        defer { close(fd) }
        let banner = Array("SSH-2.0-migplan_probe\r\n".utf8)
        guard TCP.sendAll(fd, banner, deadline: deadline) else { return nil }
        var buffer: [UInt8] = []
        // Skip the server's identification line(s).
        while true {
            guard let nl = buffer.firstIndex(of: 10) else {
                guard buffer.count < 8192, TCP.receiveSome(fd, into: &buffer, deadline: deadline) else { return nil }
                continue
            }
            let line = buffer[..<nl]
            buffer.removeSubrange(...nl)
            if line.starts(with: Array("SSH-".utf8)) { break }
        }
        while buffer.count < 5 {
            guard TCP.receiveSome(fd, into: &buffer, deadline: deadline) else { return nil }
        }
        let packetLength = Int(buffer[0]) << 24 | Int(buffer[1]) << 16 | Int(buffer[2]) << 8 | Int(buffer[3])
        guard packetLength > 1, packetLength < 256 * 1024 else { return nil }
        while buffer.count < 4 + packetLength {
            guard TCP.receiveSome(fd, into: &buffer, deadline: deadline) else { return nil }
        }
        let padding = Int(buffer[4])
        guard padding < packetLength - 1 else { return nil }
        let payload = Array(buffer[5..<(4 + packetLength - padding)])
        return ServerOffer(kexinitPayload: payload)
    }
}

/// Small non-blocking TCP helpers shared by the connection and the probe.
enum TCP {
    enum ConnectFailure: Error {
        case refused, unreachable(String), timedOut, badAddress(String), other(String)
    }

    /// Milliseconds until `deadline`, at least 0, for `poll()`.
    static func millis(until deadline: ContinuousClock.Instant) -> Int32 {
        let d = deadline - ContinuousClock.now
        if d <= .zero { return 0 }
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000 + 1
        return Int32(clamping: ms)
    }

    static func connect(address: String, port: Int, deadline: ContinuousClock.Instant) throws(ConnectFailure) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(address, String(port), &hints, &result)
        guard rc == 0, let info = result else {
            throw .badAddress(String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
                        | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .other("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
            guard errno == EINPROGRESS else {
                let e = errno
                close(fd)
                throw classify(e)
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            while true {
                let n = poll(&pfd, 1, millis(until: deadline))
                if n < 0 && errno == EINTR { continue }
                if n == 0 { close(fd); throw .timedOut }
                break
            }
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
            if soError != 0 {
                close(fd)
                throw classify(soError)
            }
        }
        return fd
    }

    private static func classify(_ e: Int32) -> ConnectFailure {
        switch e {
        case ECONNREFUSED: return .refused
        case EHOSTUNREACH, ENETUNREACH, EHOSTDOWN: return .unreachable(String(cString: strerror(e)))
        case ETIMEDOUT: return .timedOut
        default: return .other(String(cString: strerror(e)))
        }
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8], deadline: ContinuousClock.Instant) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n > 0 { done += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) {
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&pfd, 1, millis(until: deadline)) <= 0 { return false }
                continue
            }
            return false
        }
        return true
    }

    static func receiveSome(_ fd: Int32, into buffer: inout [UInt8], deadline: ContinuousClock.Instant) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { buffer.append(contentsOf: chunk[..<n]); return true }
            if n == 0 { return false }
            if errno == EAGAIN || errno == EINTR {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, millis(until: deadline)) <= 0 { return false }
                continue
            }
            return false
        }
    }
}
