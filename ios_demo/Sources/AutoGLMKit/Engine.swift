/// The four components of a bundle, as the Python runtime's Backend protocol has them
/// (runtime/autoglm_runtime/backends/__init__.py). Tensors are flat row-major Float arrays.
public protocol Engine: AnyObject {
    /// pixel_values [patches * patch_dim] -> image embeddings [image_tokens * hidden].
    func visionEncoder(_ pixelValues: [Float]) throws -> [Float]
    /// input_features [mel_bins * frames] -> audio embeddings [audio_tokens * hidden].
    func audioEncoder(_ inputFeatures: [Float]) throws -> [Float]
    /// token ids [S] -> embeddings [S * hidden].
    func tokenEmbedding(_ ids: [Int]) throws -> [Float]
    /// S tokens written to cache slots start ..< start + S; returns logits [S * vocab].
    func textDecoder(_ embeds: [Float], start: Int, positionIds: [[Int]]) throws -> [Float]
    /// Clears the KV cache before a new prompt.
    func reset()
}
