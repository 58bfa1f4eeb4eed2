/// Render the manifest's chat template, tokenize, expand placeholders and compute positions
/// (runtime prompt.py encode_chat): each <|image|> id becomes image_tokens copies (type 1), each
/// <|audio|> id audio_tokens copies (type 0: GLM-4.1V's M-RoPE has no audio modality).
public struct PromptInputs {
    public let text: String
    public let tokenIds: [Int]
    public let inputIds: [Int]
    public let types: [Int]
    public let positionIds: [[Int]]  // [3][S]
    public let ropeDelta: Int
}

public struct PromptEncoder {
    let manifest: BundleManifest
    let tokenizer: TextTokenizer

    public init(manifest: BundleManifest, tokenizer: TextTokenizer) {
        self.manifest = manifest
        self.tokenizer = tokenizer
    }

    /// enableThinking nil or true: the template's default; false: an empty think block after the
    /// generation prompt.
    public func render(_ messages: [Message], enableThinking: Bool?) -> String {
        let t = manifest.chatTemplate
        var out = t.prefix
        for m in messages {
            var content = ""
            for p in m.parts {
                switch p {
                case .text(let s): content += s
                case .image: content += t.imagePlaceholder
                case .audio: content += t.audioPlaceholder
                }
            }
            // Literal replacement: message text may itself contain "{content}".
            let turn = t.turn.replacingOccurrences(of: "{role}", with: m.role)
            out += turn.replacingOccurrences(of: "{content}", with: content)
        }
        out += t.generationPrompt
        if enableThinking == false { out += t.thinkingOffSuffix }
        return out
    }

    public func encode(_ messages: [Message], enableThinking: Bool?) throws -> PromptInputs {
        let nImg = messages.reduce(0) { $0 + $1.count(.image) }
        let nAud = messages.reduce(0) { $0 + $1.count(.audio) }
        if nAud > 0 && !manifest.hasAudio {
            throw AutoGLMError("this model has no audio tower; remove the recording")
        }
        let text = render(messages, enableThinking: enableThinking)
        let ids = try tokenizer.encode(text)
        let imageId = manifest.imageTokenId
        let audioId = manifest.audioTokenId ?? -1
        // Placeholder ids must come only from media parts: typed "<|image|>" would desync the features.
        if ids.filter({ $0 == imageId }).count != nImg {
            throw AutoGLMError("message text contains the reserved token <|image|>")
        }
        if manifest.hasAudio && ids.filter({ $0 == audioId }).count != nAud {
            throw AutoGLMError("message text contains the reserved token <|audio|>")
        }
        var expanded: [Int] = []
        var types: [Int] = []
        for t in ids {
            if t == imageId {
                expanded += Array(repeating: t, count: manifest.image.numTokens)
                types += Array(repeating: Positions.image, count: manifest.image.numTokens)
            } else if manifest.hasAudio && t == audioId {
                expanded += Array(repeating: t, count: manifest.audioTokens)
                types += Array(repeating: Positions.text, count: manifest.audioTokens)
            } else {
                expanded.append(t)
                types.append(Positions.text)
            }
        }
        let g = manifest.image.gridTHW
        let grids = Array(repeating: [g.0, g.1, g.2], count: nImg)
        let pos = try Positions.ropeIndex(types: types, grids: grids, mergeSize: manifest.image.mergeSize)
        return PromptInputs(text: text, tokenIds: ids, inputIds: expanded, types: types,
                            positionIds: pos.ids, ropeDelta: pos.ropeDelta)
    }
}
