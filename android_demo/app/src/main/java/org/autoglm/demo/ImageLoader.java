package org.autoglm.demo;

import android.content.ContentResolver;
import android.graphics.Bitmap;
import android.graphics.ImageDecoder;
import android.net.Uri;
import java.io.IOException;
import org.autoglm.engine.EngineException;

/** A picked or captured image as ARGB pixels, upright (ImageDecoder applies EXIF orientation). */
final class ImageLoader {
  final Bitmap bitmap;
  final int[] argb;

  private ImageLoader(Bitmap bitmap) {
    this.bitmap = bitmap;
    int w = bitmap.getWidth();
    int h = bitmap.getHeight();
    argb = new int[w * h];
    bitmap.getPixels(argb, 0, w, 0, 0, w, h);
  }

  static ImageLoader load(ContentResolver resolver, Uri uri) {
    try {
      ImageDecoder.Source src = ImageDecoder.createSource(resolver, uri);
      // Software ARGB_8888 in sRGB: getPixels needs a CPU bitmap; no colour-space conversion
      // beyond what the runtime's PIL decode does.
      Bitmap bmp = ImageDecoder.decodeBitmap(src, (decoder, info, s) -> {
        decoder.setAllocator(ImageDecoder.ALLOCATOR_SOFTWARE);
        decoder.setMutableRequired(false);
      });
      if (bmp.getConfig() != Bitmap.Config.ARGB_8888) {
        bmp = bmp.copy(Bitmap.Config.ARGB_8888, false);
      }
      return new ImageLoader(bmp);
    } catch (IOException e) {
      throw new EngineException("cannot read image " + uri + ": " + e.getMessage(), e);
    }
  }
}
