"""The decoder search of Nekrasov et al. (CVPR 2019, WACV 2020): its MobileNetV2 encoder, ops and WACV decoder."""
