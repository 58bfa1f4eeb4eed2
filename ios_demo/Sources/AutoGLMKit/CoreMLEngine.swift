import CoreML

/// Engine over a Core ML bundle, calling the packages exactly as the Python runtime's
/// CoreMLBackend does (runtime/autoglm_runtime/backends/coreml_backend.py):
///
/// - The decoder is a chain of packages (`BundleManifest.DecoderLink`; one package for small models):
///   every call runs them in order, each with its own share of the KV cache.
/// - iOS 18 (`kv_cache: state`): one MLState shared by `prefill` (a fixed chunk) and `decode` (one
///   token). A shorter last chunk is padded with zero rows (their keys land in slots a later call
///   overwrites before any query can see them; their logits are dropped); a chunk that would run
///   past max_context goes through `decode` token by token.
/// - iOS 17 (`kv_cache: inputs_outputs`): one function `main` for 1...prefill_chunk tokens; the cache is
///   passed whole as `key_cache` / `value_cache` and the returned `key_update` / `value_update` rows
///   are written at slots start ..< start + S here.
public final class CoreMLEngine: Engine {
    let manifest: BundleManifest
    let runner: CoreMLRunner
    private var states: [DecoderState?]?  // iOS 18: per decoder package (nil for the head)
    private var keyCaches: [[Float]] = []  // iOS 17: per decoder package (empty for the head)
    private var valueCaches: [[Float]] = []

    public init(manifest: BundleManifest, runner: CoreMLRunner) throws {
        guard manifest.target == "coreml" else {
            throw AutoGLMError("\(manifest.root.path): a \(manifest.target) bundle, not a Core ML one (dist/ios)")
        }
        guard !manifest.decoderChain.isEmpty else {
            throw AutoGLMError("\(manifest.root.path): manifest.json has no Core ML text_decoder package")
        }
        self.manifest = manifest
        self.runner = runner
        reset()
    }

    private func run(_ component: String, _ function: String, _ inputs: [String: MLMultiArray]) throws -> [String: MLMultiArray] {
        guard let pkg = manifest.packages[component] else {
            throw AutoGLMError("this bundle was exported without \(component)")
        }
        return try runner.predict(package: pkg.file, function: function, inputs: inputs, state: nil)
    }

    /// One decoder call through every package of the chain in order (the first on the call's
    /// `inputs_embeds`, each next on the previous one's output; the head on that alone); each
    /// package's outputs. iOS 17: each package gets its own cache.
    private func chain(_ inputs: [String: MLMultiArray], _ function: String) throws -> [[String: MLMultiArray]] {
        var outs: [[String: MLMultiArray]] = []
        guard var x = inputs[ModelNames.inputInputsEmbeds] else { throw AutoGLMError("text_decoder called without inputs_embeds") }
        for (i, link) in manifest.decoderChain.enumerated() {
            var feeds = inputs
            feeds[ModelNames.inputInputsEmbeds] = x
            if let shape = link.cacheShape, manifest.kvCache != "state" {
                feeds[ModelNames.inputKeyCache] = try MultiArrays.float16(keyCaches[i], shape: shape)
                feeds[ModelNames.inputValueCache] = try MultiArrays.float16(valueCaches[i], shape: shape)
            } else if link.cacheShape == nil {
                feeds = [ModelNames.inputInputsEmbeds: x]
            }
            let out = try runner.predict(package: link.file, function: function, inputs: feeds, state: states?[i] ?? nil)
            outs.append(out)
            x = try output(out, link.output)
        }
        return outs
    }

    private func output(_ out: [String: MLMultiArray], _ name: String) throws -> MLMultiArray {
        guard let a = out[name] else { throw AutoGLMError("the model returned no '\(name)'") }
        return a
    }

    public func visionEncoder(_ pixelValues: [Float]) throws -> [Float] {
        let x = try MultiArrays.float16(pixelValues, shape: [manifest.image.numPatches, manifest.image.patchDim])
        let out = try run(ModelNames.componentVisionEncoder, ModelNames.functionMain, [ModelNames.inputPixelValues: x])
        return MultiArrays.floats(try output(out, ModelNames.outputImageEmbeds))
    }

    public func audioEncoder(_ inputFeatures: [Float]) throws -> [Float] {
        guard let a = manifest.audio else { throw AutoGLMError("this model has no audio tower") }
        let x = try MultiArrays.float16(inputFeatures, shape: [1, a.numMelBins, a.numFrames])
        let out = try run(ModelNames.componentAudioEncoder, ModelNames.functionMain, [ModelNames.inputInputFeatures: x])
        return MultiArrays.floats(try output(out, ModelNames.outputAudioEmbeds))
    }

    public func tokenEmbedding(_ ids: [Int]) throws -> [Float] {
        var out: [Float] = []
        for start in stride(from: 0, to: ids.count, by: manifest.maxContext) {
            let chunk = Array(ids[start..<min(start + manifest.maxContext, ids.count)])
            let x = try MultiArrays.int32(chunk, shape: [1, chunk.count])
            let r = try run(ModelNames.componentTokenEmbedding, ModelNames.functionMain, [ModelNames.inputTokenIds: x])
            out += MultiArrays.floats(try output(r, ModelNames.outputEmbeds))
        }
        return out
    }

    public func textDecoder(_ embeds: [Float], start: Int, positionIds: [[Int]]) throws -> [Float] {
        let n = embeds.count / manifest.hiddenSize
        guard n > 0 else { throw AutoGLMError("text_decoder called with no tokens") }
        guard start + n <= manifest.maxContext else {
            throw AutoGLMError("cache positions up to \(start + n - 1) exceed the exported context of \(manifest.maxContext) tokens")
        }
        return manifest.kvCache == "state"
            ? try decodeWithState(embeds, n: n, start: start, positionIds: positionIds)
            : try decodeExplicit(embeds, n: n, start: start, positionIds: positionIds)
    }

    public func reset() {
        states = nil
        if manifest.kvCache != "state" {
            keyCaches = manifest.decoderChain.map { [Float](repeating: 0, count: $0.cacheShape?.reduce(1, *) ?? 0) }
            valueCaches = keyCaches
        }
    }

    /// fp16 [1, 1, rows, start + rows]: row i (cache slot start + i) sees slots 0 ... start + i.
    static func causalMask(start: Int, rows: Int) -> [Float] {
        let end = start + rows
        var m = [Float](repeating: 0, count: rows * end)
        for i in 0..<rows { for k in 0..<end where k > start + i { m[i * end + k] = -Float.infinity } }
        return m
    }

    private func columns(_ p: [[Int]], _ from: Int, _ to: Int) -> [Int] {
        (0..<3).flatMap { Array(p[$0][from..<to]) }
    }

    private func decodeWithState(_ embeds: [Float], n: Int, start: Int, positionIds: [[Int]]) throws -> [Float] {
        if states == nil {
            states = try manifest.decoderChain.map { link in
                try link.cacheShape.map { _ in try runner.makeState(package: link.file, function: ModelNames.functionDecode) }
            }
        }
        let c = manifest.prefillChunk, h = manifest.hiddenSize, v = manifest.vocabSize
        var logits: [Float] = []
        var i = 0
        while i < n {
            let left = n - i, pos = start + i
            if left == 1 || pos + c > manifest.maxContext || c == 1 {
                let rows = try callState(ModelNames.functionDecode, Array(embeds[(i * h)..<((i + 1) * h)]),
                                         columns(positionIds, i, i + 1), start: pos, rows: 1)
                logits += rows
                i += 1
                continue
            }
            let take = min(c, left)
            var e = [Float](repeating: 0, count: c * h)
            e.replaceSubrange(0..<(take * h), with: embeds[(i * h)..<((i + take) * h)])
            var p = [[Int]](repeating: [Int](repeating: 0, count: c), count: 3)
            for plane in 0..<3 {
                for k in 0..<take { p[plane][k] = positionIds[plane][i + k] }
                // Padding rows: any valid table index; their outputs are dropped.
                for k in take..<c { p[plane][k] = min(p[plane][take - 1] + (k - take + 1), manifest.maxContext - 1) }
            }
            let rows = try callState(ModelNames.functionPrefill, e, columns(p, 0, c), start: pos, rows: c)
            logits += rows[0..<(take * v)]
            i += take
        }
        return logits
    }

    private func callState(_ function: String, _ embeds: [Float], _ positions: [Int], start: Int, rows: Int) throws -> [Float] {
        let inputs: [String: MLMultiArray] = [
            ModelNames.inputInputsEmbeds: try MultiArrays.float16(embeds, shape: [1, rows, manifest.hiddenSize]),
            ModelNames.inputPositionIds: try MultiArrays.int32(positions, shape: [3, rows]),
            ModelNames.inputCausalMask: try MultiArrays.float16(CoreMLEngine.causalMask(start: start, rows: rows),
                                                                shape: [1, 1, rows, start + rows]),
        ]
        let outs = try chain(inputs, function)
        return MultiArrays.floats(try output(outs[outs.count - 1], ModelNames.outputLogits))
    }

    private func decodeExplicit(_ embeds: [Float], n: Int, start: Int, positionIds: [[Int]]) throws -> [Float] {
        let c = manifest.prefillChunk, h = manifest.hiddenSize
        var logits: [Float] = []
        for i in stride(from: 0, to: n, by: c) {
            let s = min(c, n - i), pos = start + i
            let inputs: [String: MLMultiArray] = [
                ModelNames.inputInputsEmbeds: try MultiArrays.float16(Array(embeds[(i * h)..<((i + s) * h)]), shape: [1, s, h]),
                ModelNames.inputPositionIds: try MultiArrays.int32(columns(positionIds, i, i + s), shape: [3, s]),
                ModelNames.inputCausalMask: try MultiArrays.float16(CoreMLEngine.causalMask(start: pos, rows: s),
                                                                    shape: [1, 1, s, pos + s]),
            ]
            let outs = try chain(inputs, ModelNames.functionMain)
            for (k, link) in manifest.decoderChain.enumerated() {
                guard let shape = link.cacheShape else { continue }  // the head keeps no cache
                write(MultiArrays.floats(try output(outs[k], ModelNames.outputKeyUpdate)), into: &keyCaches[k], shape: shape, at: pos, rows: s)
                write(MultiArrays.floats(try output(outs[k], ModelNames.outputValueUpdate)), into: &valueCaches[k], shape: shape, at: pos, rows: s)
            }
            logits += MultiArrays.floats(try output(outs[outs.count - 1], ModelNames.outputLogits))
        }
        return logits
    }

    /// Copies update [layers, 1, kv, rows, hd] into cache `shape` [layers, 1, kv, max_context, hd] at slot `at`.
    private func write(_ update: [Float], into cache: inout [Float], shape s: [Int], at: Int, rows: Int) {
        let (groups, ctx, hd) = (s[0] * s[1] * s[2], s[3], s[4])
        for g in 0..<groups {
            for r in 0..<rows {
                let src = (g * rows + r) * hd, dst = (g * ctx + at + r) * hd
                cache.replaceSubrange(dst..<(dst + hd), with: update[src..<(src + hd)])
            }
        }
    }
}
