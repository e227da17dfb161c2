"""The blob -> 2D -> template loop: template sets made from the live 2D classes, stored durably, fed to the pick stage, and the re-picking of earlier exposures."""
