"""Independent quality checkers for generated images (none shares weights or code paths with the
LDM): a digit classifier and FID network trained on real digits, a colour/shape/position reader
for shapes-world images, inpainting error with a Telea baseline, and PSNR/SSIM against bicubic."""
from .digits import DigitAccuracy, DigitChecker, DigitFID, digit_checker, frechet_distance
from .restoration import InpaintingError, ReconstructionQuality, SuperResQuality, bicubic_upsample, telea_inpaint
from .shapes import ShapesCaptionAccuracy, ShapesLayoutAccuracy, check_caption, check_layout, detect

__all__ = ["DigitAccuracy", "DigitChecker", "DigitFID", "InpaintingError", "ShapesCaptionAccuracy",
           "ReconstructionQuality", "ShapesLayoutAccuracy", "SuperResQuality", "bicubic_upsample", "check_caption", "check_layout",
           "detect", "digit_checker", "frechet_distance", "telea_inpaint"]
