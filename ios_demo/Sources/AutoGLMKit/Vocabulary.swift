import Foundation

/// Token id to raw bytes from tokenizer.json, for streaming decode (runtime tokenizer.py
/// token_bytes): byte-level BPE characters map back through GPT-2's bytes_to_unicode table.
public struct Vocabulary {
    var pieces: [Int: String] = [:]
    var added: [Int: String] = [:]
    var special: Set<Int> = []
    let byteOf: [Character: UInt8]

    public static func read(_ url: URL) throws -> Vocabulary {
        guard let data = try? Data(contentsOf: url) else { throw AutoGLMError("\(url.path): cannot read") }
        return try Vocabulary(json: data, path: url.path)
    }

    public init(json data: Data, path: String) throws {
        guard let tok = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let model = tok["model"] as? [String: Any], let vocab = model["vocab"] as? [String: Int] else {
            throw AutoGLMError("\(path): not a tokenizer.json")
        }
        guard (tok["decoder"] as? [String: Any])?["type"] as? String == "ByteLevel" else {
            throw AutoGLMError("\(path): not a byte-level tokenizer; streaming needs ByteLevel")
        }
        for (piece, id) in vocab { pieces[id] = piece }
        for a in (tok["added_tokens"] as? [[String: Any]]) ?? [] {
            guard let id = a["id"] as? Int, let content = a["content"] as? String else { continue }
            added[id] = content
            if a["special"] as? Bool == true { special.insert(id) }
        }
        var table: [Character: UInt8] = [:]
        var extra = 0
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            let scalar = Unicode.Scalar(UInt32(printable ? b : 256 + extra))!
            if !printable { extra += 1 }
            table[Character(scalar)] = UInt8(b)
        }
        byteOf = table
    }

    public func isSpecial(_ id: Int) -> Bool { special.contains(id) }

    public func tokenBytes(_ id: Int) throws -> [UInt8] {
        if let a = added[id] { return Array(a.utf8) }
        guard let piece = pieces[id] else { throw AutoGLMError("token id \(id) is outside the tokenizer's vocabulary") }
        // Iterate unicode scalars: a Character could merge combining marks in the byte alphabet.
        return try piece.unicodeScalars.map { s in
            guard let b = byteOf[Character(s)] else { throw AutoGLMError("token \(id) is outside the byte-level alphabet") }
            return b
        }
    }
}

/// Ids to text deltas as they arrive, never splitting a UTF-8 character (runtime StreamDecoder).
public struct StreamDecoder {
    let vocab: Vocabulary
    let skipSpecial: Bool
    var pending: [UInt8] = []

    public init(vocab: Vocabulary, skipSpecialTokens: Bool) {
        self.vocab = vocab
        self.skipSpecial = skipSpecialTokens
    }

    public mutating func push(_ id: Int) throws -> String {
        if skipSpecial && vocab.isSpecial(id) { return "" }
        pending += try vocab.tokenBytes(id)
        let complete = StreamDecoder.completePrefix(pending)
        let text = String(decoding: pending[..<complete], as: UTF8.self)  // invalid bytes -> U+FFFD
        pending.removeFirst(complete)
        return text
    }

    public mutating func finish() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the prefix that does not end inside a multi-byte sequence.
    static func completePrefix(_ b: [UInt8]) -> Int {
        var i = b.count - 1
        var back = 0
        while i >= 0 && back < 3 && (b[i] & 0xC0) == 0x80 { i -= 1; back += 1 }
        guard i >= 0 else { return b.count }
        let lead = b[i]
        let need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
        return (b.count - i) < need ? i : b.count
    }
}
