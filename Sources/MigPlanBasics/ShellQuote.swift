/// POSIX shell quoting for values that end up in a remote command line.
///
/// Every value that comes from a plan (container names, paths, images) goes through
/// `shellQuoted` before it is joined into a command: a container named `x; rm -rf /`
/// reaches the remote shell as one literal word, never as a command.
public enum ShellQuote {
    /// Characters that never need quoting in a POSIX shell word.
    private static let safe: Set<UInt8> = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@%+=:,./_-".utf8)

    /// Quote one word. Words made only of safe characters are returned as they are.
    public static func quote(_ word: String) -> String {
        if !word.isEmpty && word.utf8.allSatisfy({ safe.contains($0) }) {
            return word
        }
        // Single quotes protect everything but a single quote, which becomes '\''.
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// Join words into a command line, quoting each.
    public static func join(_ words: [String]) -> String {
        words.map(quote).joined(separator: " ")
    }
}

extension String {
    /// This string as one POSIX shell word.
    public var shellQuoted: String { ShellQuote.quote(self) }
}
