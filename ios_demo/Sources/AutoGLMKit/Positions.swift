/// GLM-4.1V 3-plane M-RoPE position ids, a port of runtime/autoglm_runtime/positions.py (itself
/// transformers' get_rope_index): text runs advance all planes together; an image run gets a
/// (t, h, w) grid from the running position, which then advances by max(h, w) / merge.
public enum Positions {
    public static let text = 0
    public static let image = 1

    public static func ropeIndex(types: [Int], grids: [[Int]], mergeSize: Int) throws -> (ids: [[Int]], ropeDelta: Int) {
        let n = types.count
        var ids = [[Int]](repeating: [Int](repeating: 0, count: n), count: 3)
        var pos = 0
        var used = 0
        var i = 0
        while i < n {
            let kind = types[i]
            var j = i
            while j < n && types[j] == kind { j += 1 }
            let length = j - i
            if kind == text {
                for k in 0..<length { for p in 0..<3 { ids[p][i + k] = pos + k } }
                pos += length
            } else if kind == image {
                guard used < grids.count else {
                    throw AutoGLMError("prompt has more image runs than the \(grids.count) image grid(s) given")
                }
                let g = grids[used]
                used += 1
                let (t, h, w) = (g[0], g[1] / mergeSize, g[2] / mergeSize)
                guard t * h * w == length else {
                    throw AutoGLMError("image \(used) has \(length) placeholder tokens but its grid needs \(t * h * w)")
                }
                var k = i
                for tt in 0..<t { for hh in 0..<h { for ww in 0..<w {
                    ids[0][k] = pos + tt
                    ids[1][k] = pos + hh
                    ids[2][k] = pos + ww
                    k += 1
                } } }
                pos += max(g[1], g[2]) / mergeSize
            } else {
                throw AutoGLMError("token type \(kind) is not supported (0 text, 1 image)")
            }
            i = j
        }
        guard used == grids.count else {
            throw AutoGLMError("\(grids.count) image grid(s) given but the prompt has \(used) image(s)")
        }
        let maxPos = ids.flatMap { $0 }.max() ?? -1
        return (ids, n == 0 ? 0 : maxPos + 1 - n)
    }

    /// [3][count] positions of new tokens after cachePosition cached ones (text on all planes).
    public static func decode(cachePosition: Int, ropeDelta: Int, count: Int = 1) -> [[Int]] {
        let row = (0..<count).map { cachePosition + $0 + ropeDelta }
        return [row, row, row]
    }
}
